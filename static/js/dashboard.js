// The creator dashboard: live status of each film from the server-sent events at
// /api/events/videos. The page is complete without them; events only keep it current.
(function () {
  "use strict";

  var root = document.getElementById("dashboard");
  if (!root || !window.EventSource) return;
  var url = root.dataset.eventsUrl;
  var source = null;
  var seen = {};

  function apply(update) {
    var item = document.querySelector('.dash-item[data-video-id="' + update.id + '"]');
    if (update.status === "deleted") {
      if (item) item.remove();
      return;
    }
    if (!item) {
      // A film this page has not seen (uploaded in another tab): reload once to show it.
      if (!seen[update.id]) {
        seen[update.id] = true;
        location.reload();
      }
      return;
    }
    item.dataset.status = update.status;
    var badge = item.querySelector('[data-field="status"]');
    badge.textContent = update.status;
    badge.className = "badge status-" + update.status;
    var bar = item.querySelector('[data-field="progress"]');
    bar.value = Math.round((update.progress || 0) * 100);
    bar.hidden = update.status === "ready" || update.status === "failed";
    var error = item.querySelector('[data-field="error"]');
    error.textContent = update.error || "";
    error.hidden = !update.error;
    item.querySelector('[data-field="watch"]').hidden = !(update.status === "ready" || update.playable);
    if (update.status === "ready") showPoster(item);
  }

  // The poster is made during processing; swap it in for the placeholder once it exists.
  function showPoster(item) {
    var placeholder = item.querySelector(".thumb .placeholder");
    if (!placeholder) return;
    var img = new Image(160, 90);
    img.alt = "";
    img.onload = function () {
      placeholder.replaceWith(img);
    };
    img.src = item.dataset.posterUrl;
  }

  function connect() {
    source = new EventSource(url, { withCredentials: true });
    source.onmessage = function (event) {
      try {
        apply(JSON.parse(event.data));
      } catch (e) {
        /* a malformed event must not stop the others */
      }
    };
    // EventSource reconnects by itself after network errors; a closed stream (e.g. 401 after
    // logging out elsewhere) is not retried, so nothing hammers the server.
  }

  document.querySelectorAll(".dash-item").forEach(function (item) {
    seen[item.dataset.videoId] = true;
  });
  connect();
  window.addEventListener("pagehide", function () {
    if (source) source.close();
  });
})();
