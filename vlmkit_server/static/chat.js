// The chat page: a conversation with any served model through POST v1/chat/completions (stream: true),
// replies read from the server-sent events as they come, the route taken shown under each reply.
"use strict";

(() => {
  const ui = window.vlmkitUi;
  const $ = (id) => document.getElementById(id);
  const modelSelect = $("model");
  const maxTokens = $("max-tokens");
  const conversation = $("conversation");
  const empty = $("empty");
  const errorBox = $("error");
  const form = $("composer");
  const fileInput = $("image");
  const attachedBox = $("attached");
  const attachedThumbs = $("attached-thumbs");
  const message = $("message");
  const send = $("send");
  const stop = $("stop");

  const history = []; // the turns answered so far, sent with every request (multi-turn)
  let attached = []; // [{url, width, height, name}]: the shrunk images for the next message, in order
  let controller = null; // aborts the reply being streamed
  let generation = 0; // bumped by "New chat": a reply to a forgotten conversation is not kept

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  // -- models ---------------------------------------------------------------------------------------

  async function loadModels() {
    showError("");
    let models;
    try {
      models = await ui.models();
    } catch (err) {
      modelSelect.replaceChildren();
      showError(`Cannot list the models: ${ui.describe(err)}`);
      return;
    }
    const previous = modelSelect.value || ui.recall("vlmkit.chatModel");
    modelSelect.replaceChildren(...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      if (m.routes) {
        option.textContent = `${m.id} — picks a model per message`;
        option.title = m.byCapability
          ? "by what each served model can do"
          : `precise: ${m.routes.precise || "none"}, conversational: ${m.routes.conversational || "none"}`;
      } else {
        option.textContent = `${m.id} — ${m.tasks.filter((t) => ["chat", "ask", "caption"].includes(t)).join(", ") || "no chat"}`;
        option.title = m.kind;
      }
      return option;
    }));
    const ids = models.map((m) => m.id);
    modelSelect.value = ids.includes(previous) ? previous : ids.includes("auto") ? "auto" : ids[0] || "";
  }

  // -- the images to send ---------------------------------------------------------------------------

  // Several images may go with one message (models that take one per prompt answer with a clear error).
  let reading = Promise.resolve(); // the images being read: a message sent meanwhile waits for them
  let waiting = false; // a message is waiting for them

  function attach(files) {
    reading = reading.then(() => readAll(files));
    return reading;
  }

  async function readAll(files) {
    showError("");
    for (const file of files) {
      let image;
      try {
        image = await ui.shrink(file);
      } catch (err) {
        showError(ui.describe(err));
        continue;
      }
      attached.push(image);
      const thumb = document.createElement("img");
      thumb.className = "attached-preview";
      thumb.src = image.url;
      thumb.alt = `image ${attached.length} to send`;
      thumb.title = `${image.name}, sent at ${image.width}×${image.height}`;
      attachedThumbs.append(thumb);
    }
    fileInput.value = ""; // choosing the same file again attaches it again
    attachedBox.hidden = attached.length === 0;
  }

  function detach() {
    attached = [];
    fileInput.value = "";
    attachedThumbs.replaceChildren();
    attachedBox.hidden = true;
  }

  // -- the conversation -----------------------------------------------------------------------------

  function bubble(role) {
    empty.hidden = true;
    const item = document.createElement("article");
    item.className = `turn ${role}`;
    item.dataset.role = role;
    conversation.append(item);
    return item;
  }

  function addUserTurn(text, images) {
    const item = bubble("user");
    for (const image of images) {
      const thumb = document.createElement("img");
      thumb.className = "thumb";
      thumb.src = image.url;
      thumb.alt = image.name;
      thumb.title = `${image.name} (${image.width}×${image.height})`;
      item.append(thumb);
    }
    if (text) {
      const body = document.createElement("p");
      body.className = "text";
      body.textContent = text;
      item.append(body);
    }
    return item;
  }

  function addReply(model) {
    const item = bubble("assistant");
    item.dataset.state = "streaming";
    const body = document.createElement("p");
    body.className = "text";
    const note = document.createElement("p");
    note.className = "route";
    note.textContent = `${model} is answering…`;
    item.append(body, note);
    return { item, body, note };
  }

  function scrollToEnd() {
    window.scrollTo(0, document.body.scrollHeight);
  }

  // Reads server-sent events from a fetch() response, calling onEvent with each JSON payload.
  // Returns true at "data: [DONE]", false when the stream ends without it.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
        buffer = buffer.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const lines = block.split("\n");
          const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (!data) continue;
          if (data === "[DONE]") return true;
          let payload;
          try {
            payload = JSON.parse(data);
          } catch (err) {
            throw new Error("the server sent an event that is not JSON");
          }
          if (lines.includes("event: error") && !payload.error) payload = { error: payload };
          onEvent(payload);
        }
        if (done) return false;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  const TASK_WORDS = { chat: "chatting", ask: "answering the question", caption: "captioning the image" };

  // A sentence: "Answered by llava, the model you chose." or, for model auto, "Routed to blip-vqa
  // (answering the question) because of a short question (5 words)."
  function showRoute(reply, route, asked) {
    const task = TASK_WORDS[route.task] || route.task;
    reply.note.textContent = asked === "auto"
      ? `Routed to ${route.model} (${task}) because of ${route.reason}.`
      : `Answered by ${route.model}, the model you chose (${task}).`;
    reply.note.title = `task: ${route.task}`;
    reply.item.dataset.model = route.model;
  }

  async function sendMessage() {
    const text = message.value.trim();
    const model = modelSelect.value;
    if (controller) return;
    if (!model) {
      showError("No model to talk to: the model list did not load.");
      return;
    }
    if (waiting) return;
    waiting = true; // an image chosen just before Enter is still being read: send once it is
    try {
      await reading;
    } finally {
      waiting = false;
    }
    if (!text && !attached.length) {
      showError("Type a message or attach an image.");
      return;
    }
    showError("");
    const parts = [];
    for (const image of attached) parts.push({ type: "image_url", image_url: { url: image.url } });
    if (text) parts.push({ type: "text", text });
    const userMessage = { role: "user", content: parts.length === 1 && !attached.length ? text : parts };
    addUserTurn(text, attached);
    message.value = "";
    detach();
    const reply = addReply(model);
    scrollToEnd();

    const body = { model, messages: [...history, userMessage], stream: true };
    if (maxTokens.value) body.max_tokens = Number(maxTokens.value);
    const mine = generation;
    controller = new AbortController();
    busy(true);
    let produced = "";
    try {
      const response = await ui.api("v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal: controller.signal });
      if (!response.ok) throw new Error(await ui.errorOf(response));
      const served = response.headers.get("X-Vlmkit-Model");
      if (served) reply.item.dataset.model = served;
      const complete = await readEvents(response, (event) => {
        if (event.error) throw new Error(event.error.message || String(event.error));
        if (event.vlmkit && event.vlmkit.route && reply.item.dataset.routed !== "1") {
          reply.item.dataset.routed = "1";
          showRoute(reply, event.vlmkit.route, model);
        }
        const choice = event.choices && event.choices[0];
        if (choice && choice.delta && choice.delta.content) {
          produced += choice.delta.content;
          reply.body.textContent = produced;
          scrollToEnd();
        }
        if (choice && choice.finish_reason) reply.item.dataset.finish = choice.finish_reason;
      });
      if (!complete) throw new Error("the reply was cut off: the connection closed before the end");
      if (!produced) reply.body.textContent = "(an empty reply)";
      reply.item.dataset.state = "done";
      if (mine === generation) history.push(userMessage, { role: "assistant", content: produced });
    } catch (err) {
      if (err.name === "AbortError") {
        reply.item.dataset.state = "stopped";
        reply.note.textContent = reply.item.dataset.routed === "1" ? `${reply.note.textContent} (stopped)` : "stopped";
        if (produced && mine === generation) history.push(userMessage, { role: "assistant", content: produced });
      } else {
        reply.item.dataset.state = "error";
        if (reply.item.dataset.routed !== "1") reply.note.textContent = "";
        const problem = document.createElement("p");
        problem.className = "problem";
        problem.setAttribute("role", "alert");
        problem.textContent = ui.describe(err);
        reply.item.append(problem);
      }
    } finally {
      controller = null;
      busy(false);
      scrollToEnd();
    }
  }

  function busy(on) {
    send.disabled = on;
    stop.hidden = !on;
    document.body.classList.toggle("busy", on);
  }

  function newChat() {
    if (controller) controller.abort();
    generation += 1;
    history.length = 0;
    conversation.replaceChildren(empty);
    empty.hidden = false;
    showError("");
    message.focus();
  }

  // -- wiring ---------------------------------------------------------------------------------------

  ui.keyField($("api-key"), loadModels);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) controller.abort();
  });
  $("new-chat").addEventListener("click", newChat);
  $("detach").addEventListener("click", detach);
  modelSelect.addEventListener("change", () => ui.remember("vlmkit.chatModel", modelSelect.value));
  fileInput.addEventListener("change", () => {
    if (fileInput.files && fileInput.files.length) attach([...fileInput.files]);
  });
  message.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      event.preventDefault();
      attach(files);
    }
  });
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.target === document.documentElement || !event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const files = event.dataTransfer ? [...event.dataTransfer.files] : [];
    if (files.length) attach(files);
  });
  loadModels();
})();
