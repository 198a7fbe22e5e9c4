// The creator dashboard's money side: each film's offers form (PUT /api/videos/{id}/offers)
// and the chart of the last 30 days (uPlot, from static/vendor) per film: earnings, watch
// time or views. Configuration comes from data- attributes (the CSP forbids inline scripts).
(function () {
  "use strict";

  var money = window.mmMoney;
  if (!money) return;

  // -- offers -------------------------------------------------------------------------------

  function status(form, text, bad) {
    var line = form.querySelector(".form-status");
    line.textContent = text;
    line.classList.toggle("bad", !!bad);
    line.hidden = !text;
  }

  function readOffers(form) {
    var els = form.elements;
    var preview = parseInt(els.preview_seconds.value, 10);
    var body = { preview_seconds: isFinite(preview) ? preview : 0, offers: [] };
    var problems = [];
    ["buy", "rent"].forEach(function (kind) {
      if (!els[kind].checked) return;
      var currency = els[kind + "_currency"].value;
      var amount = money.parse(els[kind + "_amount"].value, currency);
      if (amount === null) problems.push("Give the " + kind + " price, like 4.99.");
      body.offers.push({ kind: kind, amount: amount, currency: currency });
    });
    ["channel", "pass"].forEach(function (kind) {
      if (els[kind].checked) body.offers.push({ kind: kind });
    });
    return { body: body, problems: problems };
  }

  function summary(answer) {
    if (!answer.offers.length) return "free";
    return (
      answer.offers
        .map(function (offer) {
          return offer.kind + (offer.amount ? " " + money.format(offer.amount, offer.currency) : "");
        })
        .join(" · ") +
      "; preview " + answer.preview_seconds + " s"
    );
  }

  document.querySelectorAll(".offers-form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var read = readOffers(form);
      if (read.problems.length) {
        status(form, read.problems.join(" "), true);
        return;
      }
      var button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      status(form, "Saving…");
      money
        .call("PUT", form.dataset.offersUrl, read.body)
        .then(
          function (answer) {
            status(form, answer.offers.length ? "Saved." : "Saved: the film is free.");
            var item = form.closest(".dash-item");
            var line = item && item.querySelector('[data-field="offers-summary"]');
            if (line) line.textContent = summary(answer);
          },
          function (error) {
            status(form, error.message + (error.body.field ? " (" + error.body.field + ")" : ""), true);
          }
        )
        .finally(function () {
          button.disabled = false;
        });
    });
  });

  var channelForm = document.getElementById("channel-form");
  if (channelForm) {
    channelForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var currency = channelForm.elements.currency.value;
      var amount = money.parse(channelForm.elements.amount.value, currency);
      if (amount === null) {
        status(channelForm, "Give the monthly price, like 5.00.", true);
        return;
      }
      money.call("PUT", channelForm.dataset.channelUrl, { amount: amount, currency: currency }).then(
        function (answer) {
          status(channelForm, "Saved: " + money.format(answer.amount, answer.currency) + " a month.");
        },
        function (error) {
          status(channelForm, error.message, true);
        }
      );
    });
  }

  // -- the chart ----------------------------------------------------------------------------

  var section = document.getElementById("dash-chart");
  var holder = document.getElementById("chart");
  if (!section || !holder) return;
  var note = document.getElementById("chart-note");
  var stats = null;
  var plot = null;
  var metric = "earned";
  var COLOURS = ["#e5161d", "#2fbf71", "#f0b429", "#4aa3ff", "#c678dd", "#56b6c2", "#ff8c42", "#9aa3b2"];
  var MAX_SERIES = 8;

  function titles() {
    var names = { "": "Channel and Pass" };
    stats.films.forEach(function (film) {
      names[film.video_id] = film.title;
    });
    return names;
  }

  function draw() {
    if (!stats || !window.uPlot) return;
    var series = stats.series;
    var byFilm = series[metric] || {};
    var names = titles();
    var keys = Object.keys(byFilm)
      .map(function (key) {
        var total = byFilm[key].reduce(function (a, b) {
          return a + b;
        }, 0);
        return { key: key, total: total };
      })
      .filter(function (entry) {
        return entry.total > 0;
      })
      .sort(function (a, b) {
        return b.total - a.total;
      })
      .slice(0, MAX_SERIES);
    var xs = series.days.map(function (day) {
      return Date.parse(day + "T00:00:00Z") / 1000;
    });
    var data = [xs];
    var lines = [{}];
    keys.forEach(function (entry, n) {
      var values = byFilm[entry.key];
      data.push(metric === "earned" ? values.map(function (v) { return v / Math.pow(10, money.exponentOf(series.currency)); }) : values);
      lines.push({
        label: names[entry.key] || entry.key,
        stroke: COLOURS[n % COLOURS.length],
        width: 2,
        points: { show: true, size: 4 },
        value: function (_u, v) {
          if (v === null || v === undefined) return "–";
          return metric === "earned" ? v.toFixed(money.exponentOf(series.currency)) + " " + series.currency : String(v);
        },
      });
    });
    if (plot) {
      plot.destroy();
      plot = null;
    }
    holder.textContent = "";
    section.dataset.series = String(keys.length);
    if (!keys.length) {
      note.textContent = "Nothing in the last 30 days yet.";
      return;
    }
    note.textContent = "";
    var width = Math.max(300, Math.min(holder.clientWidth || 800, 1100));
    plot = new window.uPlot(
      {
        width: width,
        height: 240,
        series: lines,
        axes: [
          { stroke: "#9aa3b2", grid: { stroke: "#2c313a" }, ticks: { stroke: "#2c313a" } },
          { stroke: "#9aa3b2", grid: { stroke: "#2c313a" }, ticks: { stroke: "#2c313a" } },
        ],
        scales: { x: { time: true } },
        legend: { live: true },
      },
      data,
      holder
    );
  }

  section.querySelectorAll("[data-metric]").forEach(function (button) {
    button.addEventListener("click", function () {
      metric = button.dataset.metric;
      section.querySelectorAll("[data-metric]").forEach(function (b) {
        b.classList.toggle("active", b === button);
      });
      draw();
    });
  });

  money.call("GET", section.dataset.statsUrl).then(
    function (body) {
      stats = body;
      window.mmCreatorStats = body; // for tests and debugging
      draw();
    },
    function (error) {
      note.textContent = "The figures could not be loaded: " + error.message;
    }
  );

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(draw, 200);
  });
})();
