// Shared by the watch, wallet and dashboard pages: money formatting from integer minor units,
// idempotency keys, and JSON calls with the CSRF header. window.mmMoney.
(function () {
  "use strict";

  var exponents = {};
  try {
    exponents = JSON.parse(document.documentElement.dataset.currencies || "{}");
  } catch (e) {
    exponents = {};
  }
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function exponentOf(currency) {
    return Object.prototype.hasOwnProperty.call(exponents, currency) ? exponents[currency] : 2;
  }

  // 499, "EUR" -> "4.99 EUR"; 500, "JPY" -> "500 JPY". Integer arithmetic, no floats.
  function format(amount, currency) {
    if (amount === null || amount === undefined || !currency) return "";
    var exponent = exponentOf(currency);
    var negative = amount < 0;
    var digits = String(Math.abs(Math.trunc(amount)));
    var text = digits;
    if (exponent > 0) {
      while (digits.length <= exponent) digits = "0" + digits;
      text = digits.slice(0, -exponent) + "." + digits.slice(-exponent);
    }
    return (negative ? "-" : "") + text + " " + currency;
  }

  // "4.99" in EUR -> 499; null when it is not a positive amount with at most the currency's
  // number of decimals.
  function parse(text, currency) {
    var exponent = exponentOf(currency);
    var match = /^\s*(\d+)(?:[.,](\d*))?\s*$/.exec(String(text));
    if (!match) return null;
    var fraction = match[2] || "";
    if (fraction.length > exponent) return null;
    while (fraction.length < exponent) fraction += "0";
    var amount = parseInt(match[1] + fraction, 10);
    return amount > 0 && amount < 1e12 ? amount : null;
  }

  function newKey() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map
      .call(bytes, function (b) {
        return b.toString(16).padStart(2, "0");
      })
      .join("");
  }

  function ApiError(status, body) {
    this.status = status;
    this.code = (body && body.error) || "http_" + status;
    this.message = (body && body.message) || "The server answered " + status + ".";
    this.body = body || {};
  }

  // A JSON request with the CSRF header (and an Idempotency-Key when given). Resolves with
  // the body; rejects with an ApiError (status 0: the network failed).
  function call(method, url, body, key) {
    var headers = { Accept: "application/json", "X-CSRF-Token": csrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers["Idempotency-Key"] = key;
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(
      function (response) {
        return response
          .json()
          .catch(function () {
            return {};
          })
          .then(function (data) {
            if (!response.ok) throw new ApiError(response.status, data);
            return data;
          });
      },
      function () {
        throw new ApiError(0, { error: "network", message: "Could not reach the server; check your connection." });
      }
    );
  }

  window.mmMoney = { exponentOf: exponentOf, format: format, parse: parse, newKey: newKey, call: call, ApiError: ApiError };
})();
