// The wallet page: top up through the payment provider, one Idempotency-Key per intent (kept
// while the same amount is retried, so a retry never charges twice).
(function () {
  "use strict";

  var root = document.getElementById("wallet");
  var form = document.getElementById("top-up-form");
  if (!root || !form || !window.mmMoney) return;
  var money = window.mmMoney;
  var status = document.getElementById("top-up-status");
  var balance = document.getElementById("wallet-balance");
  var pending = null; // {amount, currency, key}: the intent being tried

  function say(text, bad) {
    status.textContent = text;
    status.classList.toggle("bad", !!bad);
    status.hidden = !text;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var currency = form.elements.currency.value;
    var amount = money.parse(form.elements.amount.value, currency);
    if (amount === null) {
      say("Enter an amount like 10.00 (in " + currency + ").", true);
      return;
    }
    if (!pending || pending.amount !== amount || pending.currency !== currency) {
      pending = { amount: amount, currency: currency, key: money.newKey() };
    }
    var button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    say("Topping up " + money.format(amount, currency) + "…");
    money
      .call("POST", root.dataset.topUpUrl, { amount: amount, currency: currency }, pending.key)
      .then(
        function (done) {
          pending = null;
          if (done.balance.currency === balance.dataset.currency || balance.dataset.amount === "0") {
            balance.dataset.amount = done.balance.amount;
            balance.dataset.currency = done.balance.currency;
            balance.textContent = money.format(done.balance.amount, done.balance.currency);
          }
          say("Added " + money.format(done.amount, done.currency) + ".");
        },
        function (error) {
          // A network failure keeps the key: pressing again retries the same top-up.
          if (error.status !== 0) pending = null;
          say(error.message, true);
        }
      )
      .finally(function () {
        button.disabled = false;
      });
  });
})();
