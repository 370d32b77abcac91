// The search page: text or image queries against /api/search, results as a grid of thumbnails.
// Plain JS, no build step. URLs are relative so the app also works mounted under a prefix.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("search");
  const q = $("q");
  const fileInput = $("image");
  const kInput = $("k");
  const thresholdInput = $("threshold");
  const go = $("go");
  const results = $("results");
  const status = $("status");
  const noMatch = $("no-match");
  const errorBox = $("error");
  const upload = $("upload");
  const preview = $("upload-preview");
  let latest = 0; // only the newest request's answer is shown
  let previewUrl = null;

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearMessages() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    noMatch.hidden = true;
    status.textContent = "";
  }

  function chosenFile() {
    return fileInput.files && fileInput.files.length ? fileInput.files[0] : null;
  }

  function showUpload() {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    const file = chosenFile();
    previewUrl = file ? URL.createObjectURL(file) : null;
    preview.src = previewUrl || "";
    preview.title = file ? file.name : "";
    upload.hidden = !file;
  }

  function options(params) {
    if (kInput.value) params.set("k", kInput.value);
    if (thresholdInput.value !== "") params.set("threshold", thresholdInput.value);
    return params;
  }

  async function search() {
    const text = q.value.trim();
    const file = chosenFile();
    clearMessages();
    if (!text && !file) {
      showError("Type something to search for, or choose an image.");
      return;
    }
    let request;
    if (file) {
      const body = new FormData();
      body.append("file", file);
      options(new URLSearchParams(text ? { q: text } : {})).forEach((value, key) => body.append(key, value));
      request = () => fetch("api/search/image", { method: "POST", body });
    } else {
      const params = options(new URLSearchParams({ q: text }));
      history.replaceState(null, "", "?" + params.toString());
      request = () => fetch("api/search?" + params.toString());
    }
    const mine = ++latest;
    go.disabled = true;
    status.textContent = "Searching…";
    const started = performance.now();
    try {
      const response = await request();
      const payload = await response.json().catch(() => ({}));
      if (mine !== latest) return;
      if (!response.ok) throw new Error((payload.error && payload.error.message) || `the server answered ${response.status} ${response.statusText}`);
      render(payload, file ? (text ? `${file.name} + ${text}` : file.name) : text, performance.now() - started);
    } catch (err) {
      if (mine !== latest) return;
      results.replaceChildren();
      status.textContent = "";
      showError(err instanceof TypeError ? `Cannot reach the server (${err.message}).` : err.message);
    } finally {
      if (mine === latest) go.disabled = false;
    }
  }

  function render(payload, label, ms) {
    const hits = payload.hits || [];
    results.replaceChildren(...hits.map(tile));
    const where = payload.threshold === null || payload.threshold === undefined ? "" : ` (nothing scored ${payload.threshold} or more)`;
    if (!hits.length) {
      status.textContent = "";
      noMatch.textContent = `No match for “${label}”${where}.`;
      noMatch.hidden = false;
      return;
    }
    const plural = hits.length === 1 ? "" : "s";
    status.textContent = `${hits.length} result${plural} for “${label}” · model ${payload.model} · ${Math.round(ms)} ms`;
  }

  function tile(hit) {
    const item = document.createElement("li");
    item.className = "hit";
    item.dataset.path = hit.path;
    item.dataset.rank = String(hit.rank);
    item.dataset.sha256 = hit.sha256;

    const link = document.createElement("a");
    link.href = hit.image;
    link.target = "_blank";
    link.rel = "noopener";
    const copies = hit.duplicates && hit.duplicates.length ? `\n+${hit.duplicates.length} identical file(s)` : "";
    link.title = `${hit.path}\n${hit.width}×${hit.height} · found by ${hit.match}${copies}`;
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.name;
    img.loading = "lazy";
    link.append(img);

    const meta = document.createElement("div");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = Number(hit.score).toFixed(3);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = hit.name;
    name.title = hit.path;
    meta.append(rank, score, name);

    item.append(link, meta);
    return item;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  // A file the browser cannot show (or not an image at all) leaves no broken-image icon behind.
  preview.addEventListener("error", () => { preview.style.visibility = "hidden"; });
  preview.addEventListener("load", () => { preview.style.visibility = ""; });
  fileInput.addEventListener("change", () => {
    showUpload();
    if (chosenFile()) search();
  });
  $("clear-image").addEventListener("click", () => {
    fileInput.value = "";
    showUpload();
    q.focus();
  });

  // Drop an image anywhere on the page to search by it.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) {
      fileInput.files = files;
      fileInput.dispatchEvent(new Event("change"));
    }
  });

  fetch("health")
    .then((response) => (response.ok ? response.json() : null))
    .then((info) => {
      if (info) $("about").textContent = `${info.rows} images · model ${info.model}`;
    })
    .catch(() => {});

  // A shared link (?q=...&k=...) runs its search on load.
  const initial = new URLSearchParams(location.search);
  if (initial.get("q")) {
    q.value = initial.get("q");
    if (initial.get("k")) kInput.value = initial.get("k");
    if (initial.get("threshold")) thresholdInput.value = initial.get("threshold");
    search();
  }
})();
