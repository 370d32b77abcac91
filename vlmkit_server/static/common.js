// Shared by the chat page and the compare view: the API key field, API calls, the model list and
// client-side image shrinking. Plain JS, no build step; URLs are relative to the page.
"use strict";

window.vlmkitUi = (() => {
  const KEY_STORE = "vlmkit.apiKey";
  const MAX_SIDE = 1024; // the server shrinks to this anyway: sending more only costs bandwidth

  // sessionStorage, when the browser allows it (else settings live in the page only).
  function recall(name) {
    try {
      return sessionStorage.getItem(name) || "";
    } catch (err) {
      return "";
    }
  }

  function remember(name, value) {
    try {
      if (value) sessionStorage.setItem(name, value);
      else sessionStorage.removeItem(name);
    } catch (err) {
      /* storage disabled */
    }
  }

  let keyInput = null;

  // The key field: filled from sessionStorage, saved there on change; `onChange` runs after a change.
  function keyField(input, onChange) {
    keyInput = input;
    input.value = recall(KEY_STORE);
    input.addEventListener("change", () => {
      remember(KEY_STORE, input.value.trim());
      onChange();
    });
  }

  // fetch() with the API key (when one is set) as a Bearer token, and JSON bodies.
  function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = keyInput ? keyInput.value.trim() : recall(KEY_STORE);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    if (options.body !== undefined) headers.set("Content-Type", "application/json");
    return fetch(path, { ...options, headers });
  }

  // The message of an error response: OpenAI-style {"error": {"message"}}, or {"error": "..."}.
  async function errorOf(response) {
    const payload = await response.json().catch(() => null);
    const error = payload && payload.error;
    const message = error && (typeof error === "string" ? error : error.message);
    return message || `the server answered ${response.status} ${response.statusText}`.trim();
  }

  // A thrown error as a sentence for the page.
  function describe(err) {
    if (err instanceof TypeError) return `Cannot reach the server (${err.message}).`;
    return err.message || String(err);
  }

  // GET v1/models -> [{id, tasks, kind, routes, byCapability}]; "auto" is always among them.
  async function models() {
    const response = await api("v1/models");
    if (!response.ok) throw new Error(await errorOf(response));
    const payload = await response.json();
    return (payload.data || []).map((m) => ({
      id: m.id,
      tasks: (m.vlmkit && m.vlmkit.tasks) || [],
      kind: (m.vlmkit && m.vlmkit.kind) || "",
      routes: (m.vlmkit && m.vlmkit.routes) || null,
      byCapability: Boolean(m.vlmkit && m.vlmkit.by_capability),
    }));
  }

  // An image file -> {url: a JPEG data: URL at most MAX_SIDE px a side, width, height, name}.
  async function shrink(file) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch (err) {
      throw new Error(`${file.name || "the file"} is not an image this browser can read`);
    }
    const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
    const width = Math.max(1, Math.round(bitmap.width * scale));
    const height = Math.max(1, Math.round(bitmap.height * scale));
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff"; // JPEG has no transparency
    context.fillRect(0, 0, width, height);
    context.drawImage(bitmap, 0, 0, width, height);
    bitmap.close();
    return { url: canvas.toDataURL("image/jpeg", 0.9), width, height, name: file.name || "image" };
  }

  return { api, errorOf, describe, keyField, models, recall, remember, shrink };
})();
