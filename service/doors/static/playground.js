// The resnet-serve playground: lists the served models (GET /models), classifies an image chosen by the
// file picker, drag-and-drop or paste (POST /predict), and shows the top-k as bars. It is a plain client
// of the public API: no framework, no build step, nothing inline (the page is served under a strict CSP).
// An API key, when the service asks for one (/models answers 401), lives in this closure only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = { key: null, models: [], file: null, previewUrl: null, request: 0 };

  function authHeaders() {
    return state.key ? { Authorization: `Bearer ${state.key}` } : {};
  }

  /** The service's own error message: {"error": {"code", "message"}}, V2's {"error": "..."}, or the status. */
  async function errorMessage(response) {
    const text = await response.text().catch(() => "");
    try {
      const error = JSON.parse(text).error;
      if (error && typeof error === "object" && error.message) return `${error.message} (${response.status} ${error.code})`;
      if (typeof error === "string") return `${error} (${response.status})`;
    } catch (_) {
      // not JSON: fall through to the status line
    }
    return `${response.status} ${response.statusText || "error"}${text ? `: ${text.slice(0, 300)}` : ""}`;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function clearAnswer(text) {
    $("predictions").replaceChildren();
    $("answer").textContent = text;
    $("answer").removeAttribute("data-model");
  }

  function option(value, text) {
    const element = document.createElement("option");
    element.value = value;
    element.textContent = text;
    return element;
  }

  // --- models ------------------------------------------------------------------------------------------

  function askForKey(message) {
    $("key-form").hidden = false;
    $("key-help").textContent = `${message}. The key stays in this page's memory only.`;
    $("server").textContent = "This service needs an API key.";
    $("model").replaceChildren(option("", "waiting for the API key"));
    $("model").disabled = true;
    $("api-key").focus();
  }

  async function loadModels() {
    let response;
    try {
      response = await fetch("/models", { headers: authHeaders(), cache: "no-store" });
    } catch (error) {
      $("server").textContent = "The service does not answer.";
      showError(String(error));
      return;
    }
    if (response.status === 401) {
      askForKey(await errorMessage(response));
      return;
    }
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    showError("");
    $("key-form").hidden = true;
    const body = await response.json();
    state.models = (body.models || []).sort((a, b) => a.name.localeCompare(b.name));
    const served = state.models.length;
    $("server").textContent = `version ${body.server_version || "?"} · ${served} model${served === 1 ? "" : "s"} served`;
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(...state.models.map((model) => option(model.name, model.name)));
    select.disabled = served === 0;
    if (served === 0) select.replaceChildren(option("", "no model is served yet"));
    const wanted = state.models.some((m) => m.name === previous) ? previous : body.default_model;
    if (wanted && state.models.some((m) => m.name === wanted)) select.value = wanted;
    showMissing([...(body.not_exported || []).map((m) => [m.name, `not exported: ${m.reason}`]),
                 ...(body.unavailable || []).map((m) => [m.name, m.status])]);
    modelChanged();
  }

  function showMissing(rows) {
    $("missing").hidden = rows.length === 0;
    $("missing-summary").textContent = `${rows.length} model${rows.length === 1 ? " is" : "s are"} not served`;
    $("missing-list").replaceChildren(...rows.map(([name, why]) => {
      const item = document.createElement("li");
      const strong = document.createElement("strong");
      strong.textContent = name;
      item.append(strong, `: ${why}`);
      return item;
    }));
  }

  function selectedModel() {
    return state.models.find((model) => model.name === $("model").value);
  }

  function modelChanged() {
    const model = selectedModel();
    const versions = $("version");
    if (!model) {
      versions.replaceChildren();
      versions.disabled = true;
      $("model-facts").textContent = "";
      return;
    }
    versions.replaceChildren(
      option("", `latest (v${model.version})`),
      ...model.versions.map((v) => option(String(v.version), `v${v.version} · ${v.precision}`)),
    );
    versions.disabled = false;
    const [height, width] = model.input_size;
    const provider = (model.active_providers[0] || "").replace("ExecutionProvider", "");
    $("model-facts").textContent =
      `${model.architecture} · ${model.num_classes} classes · ${width}×${height} input · ${model.precision} · ${provider}`;
    classify();
  }

  // --- the image ---------------------------------------------------------------------------------------

  function useFile(file) {
    if (!file) return;
    state.file = file;
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    const preview = $("preview");
    preview.hidden = false;
    preview.alt = `the chosen image, ${file.name || "pasted"}`;
    preview.src = state.previewUrl;
    $("drop").classList.add("has-image");
    const kb = Math.max(1, Math.round(file.size / 1024));
    $("file-name").textContent = `${file.name || "pasted image"} · ${kb} KB`;
    classify();
  }

  async function classify() {
    const model = selectedModel();
    if (!model || !state.file) return;
    const request = ++state.request; // a newer image or model supersedes an answer still on its way
    const params = new URLSearchParams({ model: model.name });
    if ($("version").value) params.set("version", $("version").value);
    const topK = Number.parseInt($("top-k").value, 10);
    if (topK > 0) params.set("top_k", String(topK));
    const form = new FormData();
    form.append("file", state.file, state.file.name || "pasted-image");
    showError("");
    clearAnswer("Classifying…");
    const started = performance.now();
    let response;
    try {
      response = await fetch(`/predict?${params}`, { method: "POST", body: form, headers: authHeaders() });
    } catch (error) {
      if (request === state.request) { showError(String(error)); clearAnswer("No answer."); }
      return;
    }
    const elapsed = performance.now() - started;
    if (request !== state.request) return;
    if (!response.ok) {
      const message = await errorMessage(response);
      if (response.status === 401) askForKey(message);
      showError(message);
      clearAnswer("No answer.");
      return;
    }
    render(await response.json(), elapsed);
  }

  function render(body, elapsed) {
    const answer = $("answer");
    answer.textContent = `${body.model} v${body.version} answered in ${elapsed < 10 ? elapsed.toFixed(1) : Math.round(elapsed)} ms`;
    answer.dataset.model = body.model;
    answer.dataset.version = String(body.version);
    $("predictions").replaceChildren(...body.predictions.map((p, rank) => {
      const percent = p.score < 0.0001 ? "<0.01" : (100 * p.score).toFixed(p.score >= 0.999 || p.score < 0.001 ? 2 : 1);
      const item = document.createElement("li");
      item.className = rank === 0 ? "top" : "";
      item.dataset.label = p.label;
      item.dataset.score = String(p.score);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      label.title = `class ${p.index}`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", (100 * p.score).toFixed(2));
      bar.setAttribute("aria-label", `${p.label}: ${percent} %`);
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${Math.max(0.5, 100 * p.score)}%`; // CSSOM, which the CSP allows (no inline style)
      bar.append(fill);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `${percent} %`;
      item.append(label, bar, score);
      return item;
    }));
    if (window.matchMedia("(max-width: 720px)").matches) {
      $("result-title").scrollIntoView({ block: "start" }); // on a phone the answer is below the image
    }
  }

  // --- wiring ------------------------------------------------------------------------------------------

  const drop = $("drop");
  $("file").addEventListener("change", (event) => useFile(event.target.files[0]));
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    useFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.length) {
      event.preventDefault();
      useFile(files[0]);
    }
  });
  $("preview").addEventListener("error", () => { $("preview").hidden = true; drop.classList.remove("has-image"); });
  $("preview").addEventListener("load", () => {
    $("preview").classList.toggle("tiny", $("preview").naturalWidth < 128 && $("preview").naturalHeight < 128);
  });
  $("model").addEventListener("change", modelChanged);
  $("version").addEventListener("change", classify);
  $("top-k").addEventListener("change", classify);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim() || null;
    $("api-key").value = "";
    loadModels();
  });
  loadModels();
})();
