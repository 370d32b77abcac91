// The compare view: one image, several models side by side. Each model gets POST v1/caption, or
// v1/vqa when a question is given, all at once; the latency shown is measured here, in the browser.
"use strict";

(() => {
  const ui = window.vlmkitUi;
  const $ = (id) => document.getElementById(id);
  const form = $("compare");
  const fileInput = $("image");
  const preview = $("preview");
  const question = $("question");
  const maxTokens = $("max-tokens");
  const modelsBox = $("models");
  const go = $("go");
  const errorBox = $("error");
  const status = $("status");
  const answers = $("answers");
  let image = null; // {url, width, height, name}
  let reading = null; // the image being read and shrunk: Compare waits for it
  let latest = 0;

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  async function loadModels() {
    showError("");
    let models;
    try {
      models = await ui.models();
    } catch (err) {
      modelsBox.replaceChildren(modelsBox.querySelector("legend"));
      showError(`Cannot list the models: ${ui.describe(err)}`);
      return;
    }
    const usable = models.filter((m) => m.tasks.includes("caption") || m.tasks.includes("ask"));
    const boxes = usable.map((m) => {
      const label = document.createElement("label");
      label.className = "model-choice";
      label.title = m.kind;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "model";
      box.value = m.id;
      box.checked = true;
      box.dataset.tasks = m.tasks.join(" ");
      const tasks = m.tasks.filter((t) => t === "caption" || t === "ask").map((t) => (t === "ask" ? "answers" : "captions"));
      label.append(box, ` ${m.id} `);
      const what = document.createElement("span");
      what.className = "muted";
      what.textContent = `(${tasks.join(", ")})`;
      label.append(what);
      return label;
    });
    modelsBox.replaceChildren(modelsBox.querySelector("legend"), ...boxes);
    if (!boxes.length) showError("No served model can caption images or answer questions about them.");
  }

  async function choose(file) {
    showError("");
    image = null;
    go.disabled = true; // until the image is read: a click now would find no image
    status.textContent = "Reading the image…";
    const mine = (reading = ui.shrink(file));
    try {
      image = await mine;
    } catch (err) {
      image = null;
      preview.hidden = true;
      showError(ui.describe(err));
      return;
    } finally {
      if (reading === mine) {
        reading = null;
        go.disabled = false;
        status.textContent = "";
      }
    }
    if (reading !== null) return; // another file was chosen meanwhile
    preview.src = image.url;
    preview.title = `${image.name}, sent at ${image.width}×${image.height}`;
    preview.hidden = false;
  }

  function card(model) {
    const item = document.createElement("article");
    item.className = "answer";
    item.dataset.model = model;
    item.dataset.state = "waiting";
    const title = document.createElement("h2");
    title.textContent = model;
    const text = document.createElement("p");
    text.className = "text muted";
    text.textContent = "…";
    const latency = document.createElement("p");
    latency.className = "latency muted";
    item.append(title, text, latency);
    return { item, text, latency };
  }

  async function ask(model, view, mine) {
    const asked = question.value.trim();
    const body = { model, image: image.url };
    if (asked) body.question = asked;
    if (maxTokens.value) body.max_tokens = Number(maxTokens.value);
    const started = performance.now();
    try {
      const response = await ui.api(asked ? "v1/vqa" : "v1/caption", { method: "POST", body: JSON.stringify(body) });
      if (!response.ok) throw new Error(await ui.errorOf(response));
      const payload = await response.json();
      if (mine !== latest) return;
      view.text.textContent = asked ? payload.answer : payload.caption;
      view.text.classList.remove("muted");
      view.item.dataset.state = "done";
    } catch (err) {
      if (mine !== latest) return;
      view.text.textContent = ui.describe(err);
      view.text.className = "text problem";
      view.item.dataset.state = "error";
    }
    const ms = performance.now() - started;
    view.latency.textContent = `${Math.round(ms)} ms`;
    view.latency.dataset.ms = String(ms);
  }

  async function compare() {
    showError("");
    const chosen = [...modelsBox.querySelectorAll("input[name=model]:checked")].map((box) => box.value);
    if (reading) await reading.catch(() => {}); // submitted with Enter while the image is still being read
    if (!image) {
      showError("Choose an image first.");
      return;
    }
    if (!chosen.length) {
      showError("Tick at least one model.");
      return;
    }
    const mine = ++latest;
    const views = chosen.map(card);
    answers.replaceChildren(...views.map((v) => v.item));
    go.disabled = true;
    status.textContent = `${question.value.trim() ? "Asking" : "Captioning with"} ${chosen.length} model${chosen.length === 1 ? "" : "s"}…`;
    const started = performance.now();
    await Promise.all(chosen.map((model, i) => ask(model, views[i], mine)));
    if (mine !== latest) return;
    go.disabled = false;
    const failed = views.filter((v) => v.item.dataset.state === "error").length;
    status.textContent = `${chosen.length} answer${chosen.length === 1 ? "" : "s"} in ${Math.round(performance.now() - started)} ms` +
      (failed ? ` (${failed} failed)` : "");
  }

  ui.keyField($("api-key"), loadModels);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    compare();
  });
  fileInput.addEventListener("change", () => {
    if (fileInput.files && fileInput.files.length) choose(fileInput.files[0]);
  });
  loadModels();
})();
