// The watch page player: hls.js when the browser has MediaSource (Hls.isSupported()), native
// HLS otherwise. Quality menu, storyboard previews on the seek bar, resume, keyboard shortcuts,
// a grant renewed every `renew_seconds` on the same stream, and the paywall: when a preview
// ends (the playlist's ENDLIST, or a 402 from a segment) the offers show in place, the purchase
// (and a top-up if the wallet is short) happens in place, and playback goes on from where it
// stopped with a new grant. Configuration comes from data- attributes on #player (the CSP
// forbids inline scripts).
//
// The first frame: the page carries the grant (data-grant, issued while it rendered) and has
// preloaded the master playlist and the start rendition's playlist, init segment and first
// segment, so hls.js finds them fetched. The player starts on that rendition
// (data-start-rendition, chosen by the server from the bandwidth this browser measured last
// time, kept in the mm_bw cookie), without a worker (fMP4 needs no transmuxing), and fetches
// the storyboard only once the film plays.
(function () {
  "use strict";

  var root = document.getElementById("player");
  if (!root) return;
  var video = document.getElementById("video");
  var message = document.getElementById("player-message");
  var progress = document.getElementById("progress");
  var played = progress.querySelector(".played");
  var buffered = progress.querySelector(".buffered");
  var handle = progress.querySelector(".handle");
  var timeLabel = document.getElementById("time");
  var preview = document.getElementById("scrub-preview");
  var previewImage = preview.querySelector(".scrub-image");
  var previewTime = preview.querySelector(".scrub-time");
  var qualityButton = root.querySelector('[data-action="quality"]');
  var qualityMenu = document.getElementById("quality-menu");
  var playButton = root.querySelector('[data-action="play"]');
  var muteButton = root.querySelector('[data-action="mute"]');
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var loggedIn = root.dataset.loggedIn === "true";
  var knownDuration = parseFloat(root.dataset.duration) || 0;

  // State the browser tests (and anyone debugging) can read: window.mmPlayer.
  var state = {
    engine: null, // "hls.js" or "native"
    grantSource: null, // "page" (data-grant, issued with the page) or "api" (fetched)
    hls: null,
    fatalError: null,
    errors: [],
    token: null,
    expiresAt: 0,
    stream: null,
    renewSeconds: 0,
    licence: null,
    storyboard: [],
    paywall: false, // the offers are showing
    paywallReason: null, // "ended" (the preview playlist ended) or "402" (a segment refused)
    blocked: null, // {at, offers}: a segment was refused at `at` seconds
    purchases: [], // what was bought here: {id, kind, offer_id}
    resumedAt: null, // where playback went on after a purchase
    marks: {}, // when each step of the start happened (performance.now(), ms): benchmarks
    preloadBandwidth: null, // bits/s the preloaded first segment took to arrive
  };
  window.mmPlayer = state;

  function mark(name) {
    if (state.marks[name] === undefined) state.marks[name] = Math.round(performance.now());
  }
  mark("script");
  ["loadedmetadata", "loadeddata", "canplay", "playing"].forEach(function (name) {
    video.addEventListener(name, function () {
      mark(name);
    });
  });

  function showMessage(text, link) {
    message.textContent = text;
    if (link) {
      message.appendChild(document.createTextNode(" "));
      var a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.label;
      message.appendChild(a);
    }
    message.hidden = false;
  }

  function hideMessage() {
    message.hidden = true;
  }

  function formatTime(seconds) {
    if (!isFinite(seconds) || seconds < 0) seconds = 0;
    var s = Math.floor(seconds);
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var sec = String(s % 60).padStart(2, "0");
    return h ? h + ":" + String(m).padStart(2, "0") + ":" + sec : m + ":" + sec;
  }

  function duration() {
    return isFinite(video.duration) && video.duration > 0 ? video.duration : knownDuration;
  }

  // -- the playback grant ------------------------------------------------------------------

  function PlaybackError(status, text) {
    this.status = status;
    this.message = text;
  }

  function fetchGrant() {
    var url = root.dataset.playbackUrl;
    if (state.stream) url += (url.indexOf("?") < 0 ? "?" : "&") + "stream=" + encodeURIComponent(state.stream);
    return fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
    }).then(function (response) {
      return response
        .json()
        .catch(function () {
          return {};
        })
        .then(function (body) {
          if (!response.ok) {
            throw new PlaybackError(
              response.status,
              body.message || "This film cannot be played right now (error " + response.status + ")."
            );
          }
          return body;
        });
    });
  }

  function tokenOf(url) {
    var match = /\/stream\/([^/]+)\//.exec(url);
    return match ? match[1] : null;
  }

  // Every stream URL carries the token in its path; when the grant is renewed, requests made
  // from old playlists are rewritten to the new token instead of restarting playback.
  function withCurrentToken(url) {
    return state.token ? url.replace(/\/stream\/[^/]+\//, "/stream/" + state.token + "/") : url;
  }

  function acceptGrant(grant) {
    state.token = tokenOf(grant.url);
    state.url = grant.url;
    state.expiresAt = Date.parse(grant.expires_at) || 0;
    state.stream = grant.stream || state.stream;
    state.renewSeconds = grant.renew_seconds || 0;
    state.licence = grant.licence || { kind: "full", offers: [] };
    scheduleRenewal();
    return grant;
  }

  function isPreview() {
    return !!state.licence && state.licence.kind === "preview";
  }

  var renewalTimer = null;
  function scheduleRenewal() {
    clearTimeout(renewalTimer);
    if (!state.expiresAt && !state.renewSeconds) return;
    // Every renew_seconds (that keeps the stream open), and always before the token expires:
    // a minute early, or halfway for very short grants.
    var wait = state.renewSeconds ? state.renewSeconds * 1000 : Infinity;
    if (state.expiresAt) {
      var left = state.expiresAt - Date.now();
      wait = Math.min(wait, Math.max(5000, Math.min(left - 60000, left / 2)));
    }
    renewalTimer = setTimeout(function () {
      renewGrant().then(function () {
        // Bought in another tab while this one played the preview: play on here too.
        if (state.paywall && !isPreview()) playOn();
      });
    }, Math.max(1000, wait));
  }

  function renewGrant() {
    var wasPreview = isPreview();
    return fetchGrant().then(
      function (grant) {
        acceptGrant(grant);
        state.upgraded = state.upgraded || (wasPreview && !isPreview());
        return grant;
      },
      function (error) {
        showMessage(error.message || "Could not renew access to this film.");
        throw error;
      }
    );
  }

  // -- storyboard ----------------------------------------------------------------------------

  function parseTimestamp(text) {
    var parts = text.trim().split(":").map(parseFloat);
    var seconds = 0;
    for (var i = 0; i < parts.length; i++) seconds = seconds * 60 + parts[i];
    return seconds;
  }

  function loadStoryboard(url) {
    if (!url) return;
    fetch(url, { credentials: "same-origin" })
      .then(function (r) {
        return r.ok ? r.text() : "";
      })
      .then(function (text) {
        var cues = [];
        text.split(/\r?\n\r?\n/).forEach(function (block) {
          var lines = block.trim().split(/\r?\n/);
          for (var i = 0; i < lines.length - 1; i++) {
            var times = lines[i].split("-->");
            if (times.length !== 2) continue;
            var target = lines[i + 1].trim();
            var hash = /#xywh=(\d+),(\d+),(\d+),(\d+)$/.exec(target);
            if (!hash) continue;
            cues.push({
              start: parseTimestamp(times[0]),
              end: parseTimestamp(times[1]),
              image: new URL(target.split("#")[0], new URL(url, location.href)).href,
              x: +hash[1], y: +hash[2], w: +hash[3], h: +hash[4],
            });
          }
        });
        state.storyboard = cues;
        if (cues.length) new Image().src = cues[0].image; // warm the cache before the first hover
      })
      .catch(function () {
        state.storyboard = [];
      });
  }

  function cueAt(seconds) {
    var cues = state.storyboard;
    for (var i = 0; i < cues.length; i++) {
      if (seconds >= cues[i].start && seconds < cues[i].end) return cues[i];
    }
    return cues.length ? cues[cues.length - 1] : null;
  }

  // -- quality menu --------------------------------------------------------------------------

  function buildQualityMenu(levels) {
    qualityMenu.textContent = "";
    var options = [{ label: "Auto", level: -1 }];
    levels
      .map(function (level, index) {
        return { label: level.height + "p", level: index, height: level.height };
      })
      .sort(function (a, b) {
        return b.height - a.height;
      })
      .forEach(function (option) {
        options.push(option);
      });
    options.forEach(function (option) {
      var li = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.setAttribute("role", "menuitemradio");
      button.dataset.level = option.level;
      button.textContent = option.label;
      button.addEventListener("click", function () {
        if (state.hls) state.hls.currentLevel = option.level;
        markQuality();
        toggleQualityMenu(false);
      });
      li.appendChild(button);
      qualityMenu.appendChild(li);
    });
    markQuality();
    qualityButton.parentElement.hidden = levels.length < 2;
  }

  function markQuality() {
    var hls = state.hls;
    if (!hls) return;
    var auto = hls.autoLevelEnabled;
    var current = hls.levels[hls.currentLevel] || hls.levels[hls.nextLoadLevel];
    qualityButton.textContent = auto
      ? "Auto" + (current ? " · " + current.height + "p" : "")
      : (current ? current.height + "p" : "Auto");
    Array.prototype.forEach.call(qualityMenu.querySelectorAll("button"), function (b) {
      var level = +b.dataset.level;
      b.setAttribute("aria-checked", String(auto ? level === -1 : level === hls.currentLevel));
    });
  }

  function toggleQualityMenu(open) {
    if (open === undefined) open = qualityMenu.hidden;
    qualityMenu.hidden = !open;
    qualityButton.setAttribute("aria-expanded", String(open));
  }

  // -- starting playback ---------------------------------------------------------------------

  var resumeAt = parseFloat(root.dataset.resume) || 0;
  var startRendition = root.dataset.startRendition || "";
  var startBandwidth = parseInt(root.dataset.bandwidth, 10) || 0;

  // The level of the rendition the server chose to start on (its playlist and first segment
  // are preloaded), or -1 (hls.js decides).
  function startLevelOf(levels) {
    if (!startRendition) return -1;
    var path = "/" + startRendition + "/index.m3u8";
    for (var i = 0; i < levels.length; i++) {
      var uri = levels[i].uri || "";
      if (uri.slice(-path.length) === path) return i;
    }
    return -1;
  }

  // The media the page preloaded (absolute URLs). hls.js gets them from the memory cache, so
  // its own measure of their load says nothing about the line (a 400 KB segment "arrives" in
  // a few ms); what the preload itself took does, from Resource Timing.
  var preloaded = {};
  Array.prototype.forEach.call(
    document.querySelectorAll('link[rel="preload"][as="fetch"]'),
    function (link) {
      preloaded[link.href] = true;
    }
  );

  function preloadBitsPerSecond(url) {
    var entries = performance.getEntriesByName(url, "resource");
    for (var i = 0; i < entries.length; i++) {
      var entry = entries[i];
      var bytes = entry.encodedBodySize || entry.transferSize || 0;
      var ms = entry.responseEnd - (entry.requestStart || entry.startTime);
      if (entry.initiatorType === "link" && bytes > 0 && ms > 0) return (bytes * 8000) / ms;
    }
    return 0;
  }

  // What hls.js measured, for the next watch page's start rendition (see pages.py).
  var savedBandwidth = 0;
  function saveBandwidth(estimate) {
    if (!isFinite(estimate) || estimate <= 0) return;
    estimate = Math.round(estimate);
    if (savedBandwidth && Math.abs(estimate - savedBandwidth) < savedBandwidth * 0.1) return;
    savedBandwidth = estimate;
    document.cookie =
      "mm_bw=" + estimate + "; path=/; max-age=2592000; samesite=lax" +
      (location.protocol === "https:" ? "; secure" : "");
  }

  function startWithHlsJs(url) {
    var networkRetries = 0;
    var mediaRecoveries = 0;
    var hls = new window.Hls({
      // Our segments are fMP4: nothing to transmux, so no worker to start (it would compile
      // hls.js a second time before the first frame).
      enableWorker: false,
      lowLatencyMode: false,
      startFragPrefetch: true,
      // A film, not live: 30-60 s ahead (hls.js's own ceiling is 600 s, and what is fetched
      // is metered as watched), 60 s behind (the default keeps everything played). Holding
      // back all but the first segment until the first frame was measured: it starts later.
      maxBufferLength: 30,
      maxMaxBufferLength: 60,
      backBufferLength: 60,
      abrEwmaDefaultEstimate: startBandwidth || 500000,
      // A 402 (past the preview) or 403 is an answer, not a hiccup: no retry storms.
      fragLoadPolicy: {
        default: {
          maxTimeToFirstByteMs: 10000,
          maxLoadTimeMs: 120000,
          timeoutRetry: { maxNumRetry: 4, retryDelayMs: 0, maxRetryDelayMs: 0 },
          errorRetry: {
            maxNumRetry: 6,
            retryDelayMs: 1000,
            maxRetryDelayMs: 8000,
            shouldRetry: function (retryConfig, retryCount, isTimeout, loaderResponse, retry) {
              var code = loaderResponse && loaderResponse.code;
              if (code === 402 || code === 403) return false;
              return retry;
            },
          },
        },
      },
      startPosition: resumeAt > 0 ? resumeAt : -1,
      xhrSetup: function (xhr, requestUrl) {
        xhr.open("GET", withCurrentToken(requestUrl), true);
      },
    });
    state.hls = hls;
    state.engine = "hls.js";
    [
      ["MEDIA_ATTACHED", "attached"],
      ["MANIFEST_LOADED", "master"],
      ["LEVEL_LOADED", "playlist"],
      ["FRAG_LOADED", "segment loaded"],
      ["FRAG_PARSED", "segment parsed"],
      ["FRAG_BUFFERED", "segment buffered"],
    ].forEach(function (pair) {
      hls.once(window.Hls.Events[pair[0]], function () {
        mark(pair[1]);
      });
    });
    hls.once(window.Hls.Events.MANIFEST_PARSED, function () {
      // Before hls.js starts loading (it does right after this event): the preloaded rung.
      var level = startLevelOf(hls.levels);
      if (level >= 0) hls.startLevel = level;
    });
    hls.on(window.Hls.Events.MANIFEST_PARSED, function () {
      buildQualityMenu(hls.levels);
      var attempt = video.play();
      if (attempt && attempt.catch) attempt.catch(function () {}); // autoplay may be refused
    });
    hls.on(window.Hls.Events.LEVEL_SWITCHED, markQuality);
    hls.on(window.Hls.Events.FRAG_LOADED, function (_event, data) {
      networkRetries = 0;
      var frag = data && data.frag;
      if (frag && frag.sn !== "initSegment" && preloaded[frag.url]) {
        // Before hls.js picks the next level from a cache hit's "bandwidth".
        delete preloaded[frag.url];
        state.preloadBandwidth = preloadBitsPerSecond(frag.url);
        hls.bandwidthEstimate = state.preloadBandwidth || startBandwidth || 500000;
      }
      saveBandwidth(hls.bandwidthEstimate);
    });
    hls.on(window.Hls.Events.ERROR, function (_event, data) {
      state.errors.push(data.type + ":" + data.details + (data.fatal ? " (fatal)" : ""));
      var code = data.response && data.response.code;
      if (code === 402) {
        // Past the preview: the offers, from the refusal's body when it has them.
        var offers = null;
        try {
          var body = data.networkDetails && data.networkDetails.response;
          if (body instanceof ArrayBuffer) body = new TextDecoder().decode(body);
          if (typeof body === "string" && body) offers = JSON.parse(body).offers || null;
        } catch (e) {
          offers = null;
        }
        // Play what is buffered up to the refused segment, then show the offers there.
        hls.stopLoad();
        state.blocked = { at: data.frag ? data.frag.start : video.currentTime, offers: offers };
        checkBlocked();
        return;
      }
      if (!data.fatal) return;
      if (data.type === window.Hls.ErrorTypes.NETWORK_ERROR && networkRetries < 3) {
        // Most often an expired grant (403): renew it and carry on where we were.
        networkRetries += 1;
        renewGrant().then(
          function () {
            hls.startLoad(video.currentTime || -1);
          },
          function () {}
        );
        return;
      }
      if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR && mediaRecoveries < 2) {
        mediaRecoveries += 1;
        hls.recoverMediaError();
        return;
      }
      state.fatalError = data.type + ": " + data.details;
      showMessage("This film could not be played (" + data.details + "). Reload the page to try again.");
      hls.destroy();
    });
    // The MediaSource opens while the master playlist loads.
    hls.attachMedia(video);
    hls.loadSource(url);
  }

  // After a purchase: the new grant's master playlist, from where the preview stopped.
  function switchSource(url, position) {
    if (state.engine === "hls.js" && state.hls) {
      var hls = state.hls;
      hls.config.startPosition = position;
      hls.once(window.Hls.Events.MANIFEST_PARSED, function () {
        var attempt = video.play();
        if (attempt && attempt.catch) attempt.catch(function () {});
      });
      // loadSource re-attaches the media element with a fresh MediaSource (the preview's
      // one has ended) and starts loading at startPosition.
      hls.loadSource(url);
      video.addEventListener(
        "loadedmetadata",
        function () {
          if (Math.abs(video.currentTime - position) > 1) video.currentTime = position;
        },
        { once: true }
      );
    } else {
      video.addEventListener(
        "loadedmetadata",
        function () {
          video.currentTime = position;
          var attempt = video.play();
          if (attempt && attempt.catch) attempt.catch(function () {});
        },
        { once: true }
      );
      video.src = url;
    }
  }

  function startNative(url) {
    state.engine = "native";
    video.addEventListener(
      "loadedmetadata",
      function () {
        if (resumeAt > 0 && resumeAt < duration()) video.currentTime = resumeAt;
      },
      { once: true }
    );
    video.src = url;
    var attempt = video.play();
    if (attempt && attempt.catch) attempt.catch(function () {});
  }

  // The storyboard is for the seek bar: fetched once the film plays (or after a few seconds),
  // so it never competes with the first segment.
  function loadStoryboardLater(url) {
    if (!url) return;
    var done = false;
    function load() {
      if (done) return;
      done = true;
      video.removeEventListener("playing", load);
      loadStoryboard(url);
    }
    video.addEventListener("playing", load);
    setTimeout(load, 3000);
  }

  // The grant the page came with (issued while it rendered), else one from the API.
  function firstGrant() {
    var embedded = null;
    try {
      embedded = root.dataset.grant ? JSON.parse(root.dataset.grant) : null;
    } catch (e) {
      embedded = null;
    }
    if (embedded && embedded.url) {
      state.grantSource = "page";
      return Promise.resolve(embedded);
    }
    state.grantSource = "api";
    return fetchGrant();
  }

  function start() {
    firstGrant().then(
      function (grant) {
        mark("grant");
        acceptGrant(grant);
        loadStoryboardLater(grant.storyboard_url);
        // Prefer hls.js where it works: its quality control and error handling are ours.
        if (window.Hls && window.Hls.isSupported()) {
          startWithHlsJs(grant.url);
        } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
          startNative(grant.url);
        } else {
          state.fatalError = "unsupported";
          showMessage("This browser cannot play streaming video. Try a current Firefox, Chrome or Safari.");
        }
      },
      function (error) {
        state.fatalError = "grant " + (error.status || "network");
        if (error.status === 401) {
          showMessage(error.message || "Log in to watch this film.", {
            href: root.dataset.loginUrl + "?next=" + encodeURIComponent(location.pathname),
            label: "Log in",
          });
        } else {
          showMessage(error.message || "Could not reach the server; check your connection and reload.");
        }
      }
    );
  }


  // -- the paywall ---------------------------------------------------------------------------

  var paywall = document.getElementById("paywall");
  var offerList = document.getElementById("paywall-offers");
  var paywallLogin = document.getElementById("paywall-login");
  var paywallTopUp = document.getElementById("paywall-top-up");
  var paywallShort = document.getElementById("paywall-short");
  var paywallProvider = document.getElementById("paywall-provider");
  var paywallStatus = document.getElementById("paywall-status");
  var money = window.mmMoney;
  var intent = null; // {offer, key}: the purchase being tried; its key is reused on retry
  var topUpIntent = null; // {amount, currency, key}
  var stoppedAt = 0;
  var busy = false;

  function say(text, bad) {
    paywallStatus.textContent = text || "";
    paywallStatus.classList.toggle("bad", !!bad);
    paywallStatus.hidden = !text;
  }

  function priceOf(offer) {
    if (offer.kind === "buy" || offer.kind === "rent") {
      return { amount: offer.amount, currency: offer.currency };
    }
    if (offer.kind === "pass" && root.dataset.passAmount) {
      return { amount: +root.dataset.passAmount, currency: root.dataset.passCurrency };
    }
    if (offer.kind === "channel" && root.dataset.channelAmount) {
      return { amount: +root.dataset.channelAmount, currency: root.dataset.channelCurrency };
    }
    return null;
  }

  function offerText(offer) {
    var price = priceOf(offer);
    var amount = price ? money.format(price.amount, price.currency) : "";
    if (offer.kind === "buy") return { label: "Buy", detail: "watch forever", price: amount };
    if (offer.kind === "rent") return { label: "Rent", detail: "48 h from the first play", price: amount };
    if (offer.kind === "channel") {
      return {
        label: "Subscribe to " + (root.dataset.creatorName || "the channel"),
        detail: "every film of this channel offered this way",
        price: amount ? amount + " / month" : "",
      };
    }
    if (offer.kind === "pass") {
      return { label: "Mega Movie Pass", detail: "films across the portal", price: amount ? amount + " / month" : "" };
    }
    return { label: offer.kind, detail: "", price: amount };
  }

  function renderOffers(offers) {
    offerList.textContent = "";
    offers.forEach(function (offer) {
      var text = offerText(offer);
      var li = document.createElement("li");
      li.className = "paywall-offer";
      li.dataset.kind = offer.kind;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "button offer-button";
      button.dataset.offerId = offer.id;
      button.dataset.kind = offer.kind;
      button.disabled = !loggedIn;
      var label = document.createElement("span");
      label.className = "offer-label";
      label.textContent = text.label + (offer.kind === "rent" ? " 48 h" : "");
      var price = document.createElement("span");
      price.className = "offer-price";
      price.textContent = text.price;
      button.appendChild(label);
      if (text.price) button.appendChild(price);
      var detail = document.createElement("span");
      detail.className = "offer-detail muted small";
      detail.textContent = text.detail;
      li.appendChild(button);
      li.appendChild(detail);
      offerList.appendChild(li);
      button.addEventListener("click", function () {
        choose(offer);
      });
    });
  }

  // The preview is over: from the playlist's end (ENDLIST) or a 402 from a segment.
  function previewEnded(offers) {
    if (state.paywall || !isPreview()) return;
    stoppedAt = Math.max(video.currentTime || 0, stoppedAt);
    video.pause();
    // Bought meanwhile (another tab)? A fresh grant knows.
    renewGrant().then(
      function () {
        if (!isPreview()) {
          playOn();
          return;
        }
        showPaywall(offers || state.licence.offers || []);
      },
      function () {
        showPaywall(offers || (state.licence && state.licence.offers) || []);
      }
    );
  }

  function showPaywall(offers) {
    if (!money) {
      showMessage("The free preview ends here. Reload the page to see the offers.");
      return;
    }
    state.paywall = true;
    root.classList.add("paywalled");
    renderOffers(offers);
    paywallLogin.hidden = loggedIn;
    paywallTopUp.hidden = true;
    say(offers.length ? "" : "This film cannot be bought right now.");
    paywall.hidden = false;
    var first = paywall.querySelector(loggedIn ? ".offer-button" : "#paywall-login a");
    if (first) first.focus();
  }

  function hidePaywall() {
    state.paywall = false;
    root.classList.remove("paywalled");
    paywall.hidden = true;
    paywallTopUp.hidden = true;
    say("");
  }

  function setBusy(value) {
    busy = value;
    Array.prototype.forEach.call(paywall.querySelectorAll("button"), function (b) {
      b.disabled = value || (!loggedIn && b.classList.contains("offer-button"));
    });
  }

  function choose(offer) {
    if (busy || !loggedIn) return;
    // A new intent gets a new key; pressing the same offer again after a failure (or after
    // a top-up) retries with the same key, so it can never be charged twice.
    if (!intent || intent.offer.id !== offer.id) intent = { offer: offer, key: money.newKey() };
    pay();
  }

  function pay() {
    var offer = intent.offer;
    var request;
    if (offer.kind === "buy" || offer.kind === "rent") {
      request = money.call("POST", root.dataset.purchaseUrl, { offer_id: offer.id }, intent.key);
    } else {
      var body = offer.kind === "pass" ? { plan: "pass" } : { plan: "channel", creator_id: root.dataset.creatorId };
      request = money.call("POST", root.dataset.subscriptionUrl, body, intent.key);
    }
    setBusy(true);
    say(offer.kind === "buy" ? "Buying…" : offer.kind === "rent" ? "Renting…" : "Subscribing…");
    request
      .then(
        function (done) {
          state.purchases.push({ id: done.id, kind: done.kind || offer.kind, offer_id: offer.id });
          intent = null;
          say("Done. Playing on…");
          return renewGrant().then(function () {
            if (isPreview()) throw new money.ApiError(409, { message: "The purchase went through, but the film still plays as a preview; reload the page." });
            playOn();
          });
        },
        function (error) {
          if (error.code === "insufficient_funds" || error.code === "payment_required") {
            offerTopUp(priceOf(offer));
            say(error.message, true);
            return;
          }
          if (error.status === 404 && offer.kind !== "buy" && offer.kind !== "rent") {
            intent = null;
            say("Subscriptions cannot be taken here yet.", true);
            return;
          }
          if (error.status !== 0) intent = null; // the server answered: a new try is a new intent
          say(error.message, true);
        }
      )
      .catch(function (error) {
        say(error.message || "Something went wrong; reload the page.", true);
      })
      .finally(function () {
        setBusy(false);
      });
  }

  // The wallet is short: say by how much and top it up right here.
  function offerTopUp(price) {
    paywallTopUp.hidden = false;
    paywallShort.textContent = "Your wallet is short.";
    paywallProvider.textContent = "";
    money.call("GET", root.dataset.walletUrl).then(
      function (wallet) {
        var currency = price ? price.currency : wallet.balance.currency;
        var held = 0;
        (wallet.balances || [wallet.balance]).forEach(function (b) {
          if (b.currency === currency) held = b.amount;
        });
        var needed = price ? Math.max(price.amount - held, 1) : 1000;
        var unit = Math.pow(10, money.exponentOf(currency));
        var amount = Math.ceil(needed / unit) * unit; // whole units: 3.01 short -> 4.00
        if (!topUpIntent || topUpIntent.amount !== amount || topUpIntent.currency !== currency) {
          topUpIntent = { amount: amount, currency: currency, key: money.newKey() };
        }
        paywallShort.textContent =
          "Your wallet holds " + money.format(held, currency) + ". Top up " + money.format(amount, currency) + " to continue.";
        paywallProvider.textContent = wallet.provider ? wallet.provider.label : "";
        paywallProvider.classList.toggle("dev", !!wallet.provider && wallet.provider.name === "development");
        paywallTopUp.querySelector('[data-action="top-up"]').textContent = "Top up " + money.format(amount, currency);
      },
      function (error) {
        paywallShort.textContent = error.message;
      }
    );
  }

  function topUp() {
    if (busy || !topUpIntent) return;
    setBusy(true);
    say("Topping up " + money.format(topUpIntent.amount, topUpIntent.currency) + "…");
    money
      .call("POST", root.dataset.topUpUrl, { amount: topUpIntent.amount, currency: topUpIntent.currency }, topUpIntent.key)
      .then(
        function () {
          topUpIntent = null;
          paywallTopUp.hidden = true;
          setBusy(false);
          // Then the purchase that was short, with its own key again.
          if (intent) pay();
        },
        function (error) {
          if (error.status !== 0) topUpIntent = null;
          setBusy(false);
          say(error.message, true);
        }
      );
  }

  paywall.addEventListener("click", function (event) {
    var button = event.target.closest('button[data-action="top-up"]');
    if (button) topUp();
  });

  // The licence is full now: the new grant's playlist, from where the preview stopped.
  function playOn() {
    hidePaywall();
    state.blocked = null;
    var position = stoppedAt || video.currentTime || 0;
    state.resumedAt = position;
    switchSource(state.url, position);
  }

  video.addEventListener("ended", function () {
    if (isPreview()) {
      state.paywallReason = state.paywallReason || "ended";
      previewEnded(null);
    }
  });

  // A segment was refused (402): the paywall once playback reaches it, or runs dry before.
  function checkBlocked(event) {
    var blocked = state.blocked;
    if (!blocked || state.paywall) return;
    var starved = event && event.type === "waiting";
    if (starved || video.currentTime >= blocked.at - 0.25) {
      state.blocked = null;
      state.paywallReason = "402";
      previewEnded(blocked.offers);
    }
  }
  video.addEventListener("timeupdate", checkBlocked);
  video.addEventListener("waiting", checkBlocked);

  // -- saving the position -------------------------------------------------------------------

  var lastSaved = -1;
  function savePosition(force) {
    if (!loggedIn || !video.currentTime) return;
    var position = Math.floor(video.currentTime * 10) / 10;
    if (!force && Math.abs(position - lastSaved) < 1) return;
    lastSaved = position;
    fetch(root.dataset.positionUrl, {
      method: "PUT",
      credentials: "same-origin",
      keepalive: true, // still sent while the page unloads
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ position: position }),
    }).catch(function () {});
  }
  setInterval(function () {
    if (!video.paused) savePosition(false);
  }, 5000);
  video.addEventListener("pause", function () {
    savePosition(true);
  });
  window.addEventListener("pagehide", function () {
    savePosition(true);
  });

  // -- controls ------------------------------------------------------------------------------

  function togglePlay() {
    if (state.paywall) return;
    if (video.paused || video.ended) {
      var attempt = video.play();
      if (attempt && attempt.catch) attempt.catch(function () {});
    } else {
      video.pause();
    }
  }

  function seekBy(delta) {
    var d = duration();
    var target = Math.max(0, video.currentTime + delta);
    video.currentTime = d ? Math.min(target, d - 0.1) : target;
  }

  function toggleFullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen();
    } else if (root.requestFullscreen) {
      root.requestFullscreen().catch(function () {});
    } else if (video.webkitEnterFullscreen) {
      video.webkitEnterFullscreen(); // iPhone Safari
    }
  }

  function toggleMute() {
    video.muted = !video.muted;
  }

  function render() {
    var d = duration();
    var fraction = d ? Math.min(1, video.currentTime / d) : 0;
    played.style.width = fraction * 100 + "%";
    handle.style.left = fraction * 100 + "%";
    if (video.buffered.length && d) {
      buffered.style.width = (video.buffered.end(video.buffered.length - 1) / d) * 100 + "%";
    }
    timeLabel.textContent = formatTime(video.currentTime) + " / " + formatTime(d);
    progress.setAttribute("aria-valuemax", String(Math.round(d)));
    progress.setAttribute("aria-valuenow", String(Math.round(video.currentTime)));
    progress.setAttribute("aria-valuetext", formatTime(video.currentTime));
  }

  video.addEventListener("timeupdate", render);
  video.addEventListener("durationchange", render);
  video.addEventListener("progress", render);
  video.addEventListener("play", function () {
    playButton.setAttribute("aria-label", "Pause (k)");
    root.classList.add("playing");
    hideMessage();
  });
  video.addEventListener("pause", function () {
    playButton.setAttribute("aria-label", "Play (k)");
    root.classList.remove("playing");
  });
  video.addEventListener("volumechange", function () {
    root.classList.toggle("muted", video.muted);
    muteButton.setAttribute("aria-label", video.muted ? "Unmute (m)" : "Mute (m)");
  });
  video.addEventListener("click", togglePlay);
  video.addEventListener("dblclick", toggleFullscreen);

  root.querySelector(".controls").addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button) return;
    var action = button.dataset.action;
    if (action === "play") togglePlay();
    else if (action === "mute") toggleMute();
    else if (action === "fullscreen") toggleFullscreen();
    else if (action === "quality") toggleQualityMenu();
  });

  // Seeking and storyboard previews on the progress bar, for mouse, pen and touch alike.
  function fractionAt(event) {
    var rect = progress.getBoundingClientRect();
    return Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
  }

  function showPreview(event) {
    var d = duration();
    if (!d) return;
    var fraction = fractionAt(event);
    var seconds = fraction * d;
    previewTime.textContent = formatTime(seconds);
    var cue = cueAt(seconds);
    if (cue) {
      previewImage.hidden = false;
      previewImage.style.width = cue.w + "px";
      previewImage.style.height = cue.h + "px";
      previewImage.style.backgroundImage = 'url("' + cue.image + '")';
      previewImage.style.backgroundPosition = -cue.x + "px " + -cue.y + "px";
    } else {
      previewImage.hidden = true;
    }
    var rootRect = root.getBoundingClientRect();
    var x = event.clientX - rootRect.left;
    var half = (cue ? cue.w : 40) / 2 + 4;
    preview.style.left = Math.min(rootRect.width - half, Math.max(half, x)) + "px";
    preview.hidden = false;
  }

  var dragging = false;
  progress.addEventListener("pointerdown", function (event) {
    dragging = true;
    progress.setPointerCapture(event.pointerId);
    showPreview(event);
  });
  progress.addEventListener("pointermove", function (event) {
    showPreview(event);
  });
  progress.addEventListener("pointerup", function (event) {
    if (!dragging) return;
    dragging = false;
    var d = duration();
    if (d) video.currentTime = fractionAt(event) * d;
    if (event.pointerType !== "mouse") preview.hidden = true;
  });
  progress.addEventListener("pointerleave", function () {
    if (!dragging) preview.hidden = true;
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select") return;
    var key = event.key;
    if (key === " " || key === "k" || key === "K") togglePlay();
    else if (key === "j" || key === "J" || key === "ArrowLeft") seekBy(-10);
    else if (key === "l" || key === "L" || key === "ArrowRight") seekBy(10);
    else if (key === "f" || key === "F") toggleFullscreen();
    else if (key === "m" || key === "M") toggleMute();
    else if (key === "Escape") toggleQualityMenu(false);
    else return;
    event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    if (!qualityMenu.hidden && !event.target.closest(".quality")) toggleQualityMenu(false);
  });

  // Hide the controls after a few idle seconds while playing.
  var idleTimer = null;
  function wake() {
    root.classList.remove("idle");
    clearTimeout(idleTimer);
    idleTimer = setTimeout(function () {
      root.classList.add("idle");
    }, 2500);
  }
  root.addEventListener("pointermove", wake);
  root.addEventListener("touchstart", wake, { passive: true });
  wake();

  render();
  start();
})();
