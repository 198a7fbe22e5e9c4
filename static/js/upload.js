// The upload page: resumable uploads with tus-js-client to /api/uploads. Several files at once,
// a form and a progress bar each, pause/resume, retries on dropped connections, and resuming
// after a reload (tus keeps each upload's URL under the file's fingerprint in localStorage;
// choosing the same file again carries on where it stopped).
(function () {
  "use strict";

  var root = document.getElementById("uploader");
  if (!root || !window.tus) return;
  var endpoint = root.dataset.endpoint;
  var dropzone = document.getElementById("dropzone");
  var input = document.getElementById("file-input");
  var list = document.getElementById("upload-list");
  var template = document.getElementById("upload-item");
  var afterUpload = document.getElementById("after-upload");
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var items = [];
  window.mmUploads = items; // for tests and debugging

  function formatBytes(n) {
    if (n < 1000) return n + " B";
    var units = ["kB", "MB", "GB", "TB"];
    var i = -1;
    do {
      n /= 1000;
      i += 1;
    } while (n >= 1000 && i < units.length - 1);
    return n.toFixed(1) + " " + units[i];
  }

  function titleFrom(name) {
    var base = name.replace(/\.[^.]{1,5}$/, "").replace(/[_]+/g, " ").trim();
    return (base || name).slice(0, 200);
  }

  // Turn what the server said into words for a person.
  function explain(error) {
    var response = error && error.originalResponse;
    if (!response) {
      return "The connection was lost. Press Resume to carry on; nothing sent so far is lost.";
    }
    var status = response.getStatus();
    var text = "";
    try {
      text = JSON.parse(response.getBody() || "{}").message || "";
    } catch (e) {
      text = "";
    }
    if (status === 413) return text || "This file does not fit in your remaining storage.";
    if (status === 401) return "Your session has ended. Log in again, then choose the file to resume.";
    if (status === 403) return text || "You are not allowed to upload. Reload the page and try again.";
    if (status === 400 || status === 422) return text || "The server refused this file.";
    return text || "The upload failed (error " + status + "). Press Resume to try again.";
  }

  function setStatus(item, text, kind) {
    item.status.textContent = text;
    item.el.classList.remove("error", "done");
    if (kind) item.el.classList.add(kind);
  }

  function show(item, which) {
    ["start", "pause", "resume"].forEach(function (name) {
      item.buttons[name].hidden = which.indexOf(name) < 0;
    });
  }

  function lockFields(item, locked) {
    item.fields.forEach(function (field) {
      field.disabled = locked;
    });
  }

  function refreshSummary() {
    var done = items.filter(function (i) {
      return i.state === "done";
    }).length;
    afterUpload.hidden = !(items.length && done === items.length);
  }

  function startUpload(item) {
    var title = item.form.title.value.trim();
    if (!title) {
      item.form.title.focus();
      setStatus(item, "Give the film a title first.", "error");
      return;
    }
    lockFields(item, true);
    var upload = new window.tus.Upload(item.file, {
      endpoint: endpoint,
      chunkSize: 16 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
      headers: { "X-CSRF-Token": csrf },
      metadata: {
        filename: item.file.name,
        filetype: item.file.type || "application/octet-stream",
        title: title,
        description: item.form.description.value.trim(),
        tags: item.form.tags.value.trim(),
      },
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      onProgress: function (sent, total) {
        var percent = total ? (sent / total) * 100 : 0;
        item.bar.value = percent;
        setStatus(item, "Uploading… " + percent.toFixed(0) + "% (" + formatBytes(sent) + " of " + formatBytes(total) + ")");
      },
      onAfterResponse: function (_request, response) {
        var id = response.getHeader("Video-Id");
        if (id) item.videoId = id;
      },
      onError: function (error) {
        item.state = "error";
        setStatus(item, explain(error), "error");
        var status = error.originalResponse && error.originalResponse.getStatus();
        // A refused file (quota, bad metadata) will not get better by resuming it.
        show(item, status === 413 || status === 400 || status === 422 ? [] : ["resume"]);
        if (status === 413 || status === 400 || status === 422) lockFields(item, false);
      },
      onSuccess: function () {
        item.state = "done";
        item.bar.value = 100;
        setStatus(item, "Uploaded. Processing has started: follow it on your dashboard.", "done");
        var link = document.createElement("a");
        link.href = item.videoId ? root.dataset.dashboard + "#" + item.videoId : root.dataset.dashboard;
        link.textContent = " Open the dashboard";
        item.status.appendChild(link);
        show(item, []);
        refreshSummary();
      },
    });
    item.upload = upload;
    item.state = "uploading";
    show(item, ["pause"]);
    setStatus(item, "Starting…");
    upload.findPreviousUploads().then(function (previous) {
      if (previous.length) {
        upload.resumeFromPreviousUpload(previous[0]);
        setStatus(item, "Resuming an earlier upload of this file…");
      }
      upload.start();
    });
  }

  function addFile(file) {
    var fragment = template.content.cloneNode(true);
    var el = fragment.querySelector(".upload-item");
    var item = {
      file: file,
      el: el,
      state: "new",
      upload: null,
      videoId: null,
      bar: el.querySelector("progress"),
      status: el.querySelector(".upload-status"),
      form: {
        title: el.querySelector('[name="title"]'),
        tags: el.querySelector('[name="tags"]'),
        description: el.querySelector('[name="description"]'),
      },
      buttons: {
        start: el.querySelector('[data-action="start"]'),
        pause: el.querySelector('[data-action="pause"]'),
        resume: el.querySelector('[data-action="resume"]'),
        remove: el.querySelector('[data-action="remove"]'),
      },
    };
    item.fields = [item.form.title, item.form.tags, item.form.description];
    el.querySelector(".file-name").textContent = file.name;
    el.querySelector(".file-size").textContent = formatBytes(file.size);
    item.form.title.value = titleFrom(file.name);
    item.buttons.start.addEventListener("click", function () {
      startUpload(item);
    });
    item.buttons.pause.addEventListener("click", function () {
      item.upload.abort();
      item.state = "paused";
      show(item, ["resume"]);
      setStatus(item, "Paused at " + item.bar.value.toFixed(0) + "%. Press Resume to carry on.");
    });
    item.buttons.resume.addEventListener("click", function () {
      item.state = "uploading";
      show(item, ["pause"]);
      setStatus(item, "Resuming…");
      item.upload.start();
    });
    item.buttons.remove.addEventListener("click", function () {
      // Removing a running upload also ends it on the server, freeing the space it held.
      if (item.upload && item.state !== "done") item.upload.abort(true).catch(function () {});
      items.splice(items.indexOf(item), 1);
      el.remove();
      refreshSummary();
    });
    items.push(item);
    list.appendChild(fragment);
    refreshSummary();
  }

  function addFiles(files) {
    Array.prototype.forEach.call(files, addFile);
  }

  input.addEventListener("change", function () {
    addFiles(input.files);
    input.value = ""; // choosing the same file again must fire "change" again
  });
  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      dropzone.classList.add("over");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      dropzone.classList.remove("over");
    });
  });
  dropzone.addEventListener("drop", function (event) {
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
  });

  // Tell people about uploads a reload interrupted: choosing the same file resumes it.
  var storage = window.tus.defaultOptions && window.tus.defaultOptions.urlStorage;
  if (storage && storage.findAllUploads) {
    storage.findAllUploads().then(function (unfinished) {
      if (!unfinished.length) return;
      var note = document.createElement("p");
      note.className = "alert";
      var names = unfinished
        .map(function (u) {
          return (u.metadata && u.metadata.filename) || "a file";
        })
        .join(", ");
      note.textContent =
        "Unfinished: " + names + ". Choose the same file again to resume where it stopped.";
      root.insertBefore(note, list);
    });
  }
})();
