// The page: renders the worker's state and forwards the person's actions to it. No model math
// here; the Rust core (in worker.js) does all of it.

const $ = (id) => document.getElementById(id);
const worker = new Worker("worker.js", { type: "module" });
const state = { model: null, texts: new Map(), training: false, paused: false, points: [], total: 1, adapter: false };
// Read by the end-to-end test and the benchmark (tests/), which drive this page.
window.webtuneState = state;

// ---- messages from the worker ---------------------------------------------------------------
const handlers = {
  ready({ backend }) {
    const threads = backend.threads > 1 ? `, ${backend.threads} threads` : ", one thread";
    $("backend-status").textContent = backend.kind === "webgpu"
      ? `Running on WebGPU: ${backend.adapter}.`
      : `Running on the CPU${threads}${backend.adapter ? ` (WebGPU adapter: ${backend.adapter})` : ""}: ${backend.reason}.`;
    document.body.dataset.backend = backend.kind;
    document.body.dataset.ready = "1";
  },
  modelProgress({ loaded, total, fromCache, parsing }) {
    const bar = $("model-progress");
    bar.hidden = false;
    bar.max = total || 1;
    bar.value = total ? loaded : 0;
    showStatus("model", parsing ? "Reading the model…"
      : `Loading the model${fromCache ? " from the browser cache" : ""}: ${mb(loaded)}${total ? ` of ${mb(total)}` : ""}`);
  },
  model({ info }) {
    state.model = info;
    $("model-progress").hidden = true;
    showStatus("model", "");
    const dl = $("model-info");
    dl.hidden = false;
    dl.replaceChildren(...[
      ["Model", info.name],
      ["Parameters", info.parameters >= 1e6 ? `${(info.parameters / 1e6).toFixed(1)} M` : info.parameters.toLocaleString()],
      ["Layers", info.layers],
      ["Vocabulary", info.vocab_size.toLocaleString()],
      ["Context", info.context_length.toLocaleString()],
    ].flatMap(([k, v]) => [el("dt", k), el("dd", String(v))]));
    // Texts were tokenized for the previous model: add them again.
    const texts = [...state.texts.values()].filter((t) => t.buffer);
    state.texts.clear();
    renderTexts();
    for (const t of texts) addText(t.name, t.buffer);
    updateButtons();
    requestPlan();
  },
  text({ info }) {
    const t = state.texts.get(info.name) || { name: info.name };
    Object.assign(t, info);
    state.texts.set(info.name, t);
    renderTexts();
    requestPlan();
  },
  textRemoved() { requestPlan(); },
  plan({ plan }) { renderPlan(plan); },
  measuring() { $("plan").textContent += " · measuring this machine's speed…"; },
  started({ plan }) {
    renderPlan(plan);
    state.training = true; state.paused = false; state.points = []; state.total = 1;
    $("sample-after").textContent = "";
    drawChart();
    updateButtons();
    $("train-status").textContent = "Starting…";
  },
  progress({ progress: p }) {
    state.total = p.total_steps;
    state.points.push(p);
    $("train-progress").max = p.total_steps;
    $("train-progress").value = p.step;
    const pct = Math.round((100 * p.step) / p.total_steps);
    const loss = p.train_loss != null ? `, loss ${p.train_loss.toFixed(3)}` : "";
    const val = lastVal() != null ? `, validation ${lastVal().toFixed(3)}` : "";
    const evalNote = p.next_eval_step != null ? ` · evaluates after step ${p.next_eval_step}` : "";
    $("train-status").textContent =
      `Step ${p.step} of ${p.total_steps} (${pct}%)${loss}${val} · ${Math.round(p.tokens_per_sec)} tokens/s of training · ETA ${duration(p.eta_secs)}${evalNote}`;
    document.body.dataset.progress = String(pct);
    drawChart();
  },
  paused() {
    state.paused = true;
    $("train-status").textContent += " · paused";
    updateButtons();
  },
  done({ stopped, failed }) {
    state.training = false; state.paused = false;
    state.adapter = !failed && state.points.length > 0;
    const last = state.points.at(-1);
    if (!failed) {
      $("train-status").textContent = `${stopped ? "Stopped" : "Finished"} after ${last ? last.step : 0} steps`
        + (lastVal() != null ? `: validation loss ${lastVal().toFixed(3)} (perplexity ${Math.exp(lastVal()).toFixed(1)})` : ".");
    }
    document.body.dataset.done = "1";
    updateButtons();
  },
  sample({ adapted, text, prompt }) {
    $(adapted ? "sample-after" : "sample-before").textContent = prompt + text;
  },
  adapter({ zip }) {
    const date = new Date().toISOString().slice(0, 10);
    const stem = (state.model?.name || "model").replace(/[^A-Za-z0-9._-]+/g, "-");
    const url = URL.createObjectURL(new Blob([zip], { type: "application/zip" }));
    const a = el("a");
    a.href = url;
    a.download = `${stem}-lora-${date}.zip`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  },
  error({ context, message }) {
    showError(`${contextWords[context] || "Something went wrong"}: ${message}`);
    if (context === "loadModel") { $("model-progress").hidden = true; showStatus("model", ""); }
    if (context === "start") { state.training = false; updateButtons(); }
  },
};

const contextWords = {
  init: "The compute backend could not start", loadModel: "The model could not be loaded",
  addText: "The text could not be added", plan: "These settings do not work", start: "Training could not start",
  training: "Training failed", sampling: "The sample could not be generated", export: "The adapter could not be saved",
};

worker.onmessage = ({ data }) => handlers[data.type]?.(data);
worker.onerror = (e) => showError(`The worker failed: ${e.message}`);

// ---- helpers ------------------------------------------------------------------------------
function el(tag, text) { const e = document.createElement(tag); if (text != null) e.textContent = text; return e; }
function mb(n) { return n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(1)} kB`; }
function duration(s) {
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}
function lastVal() { for (let i = state.points.length - 1; i >= 0; i--) if (state.points[i].val_loss != null) return state.points[i].val_loss; return null; }
function showError(text) {
  const box = $("error");
  box.hidden = false;
  box.replaceChildren(el("span", text));
  const close = el("button", "Dismiss");
  close.type = "button";
  close.onclick = () => { box.hidden = true; };
  box.append(close);
}
// A status line under the model section (load progress); empty text removes it.
function showStatus(where, text) {
  const section = $(`${where}-section`);
  section.querySelector(".status")?.remove();
  if (text) section.append(Object.assign(el("p", text), { className: "status" }));
}

function settings() {
  const f = new FormData($("settings"));
  const num = (k) => Number(f.get(k));
  return {
    seq_len: num("seq_len"),
    val_fraction: 0.1,
    train: {
      lora: { r: num("rank"), alpha: num("alpha"), targets: f.getAll("target") },
      // Evaluation schedule and sample size: the core's defaults (a small share of the run).
      steps: num("steps"), batch_size: num("batch_size"), lr: num("lr"),
    },
  };
}

function requestPlan() {
  if (state.model && [...state.texts.values()].some((t) => t.tokens)) worker.postMessage({ type: "plan", settings: settings() });
  else $("plan").textContent = state.model ? "Add some text to see the plan." : "";
  updateButtons();
}

function renderPlan(p) {
  const held = p.val_documents.length ? `${p.val_documents.length} file(s) held out for validation` : "the last 10% held out for validation";
  $("plan").textContent = `${p.trainable_parameters.toLocaleString()} trainable parameters · adapter ${mb(p.adapter_bytes_f32)} (f32) / ${mb(p.adapter_bytes_f16)} (f16) · `
    + `${p.train_tokens.toLocaleString()} training tokens, ${p.val_tokens.toLocaleString()} validation tokens (${held}) · ${p.epochs.toFixed(2)} epochs`
    + (p.estimated_secs != null ? ` · about ${duration(p.estimated_secs)} on this machine` : "");
}

function renderTexts() {
  const table = $("text-table");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const t of state.texts.values()) {
    const tr = el("tr");
    tr.append(el("td", t.name), el("td", t.tokens != null ? t.tokens.toLocaleString() : "–"),
      el("td", t.skipped ? `skipped: ${t.skipped}` : t.tokens != null ? "ready" : "reading…"));
    if (t.skipped) tr.className = "skipped";
    const td = el("td");
    const rm = el("button", "Remove");
    rm.type = "button";
    rm.setAttribute("aria-label", `Remove ${t.name}`);
    rm.onclick = () => { state.texts.delete(t.name); worker.postMessage({ type: "removeText", name: t.name }); renderTexts(); };
    td.append(rm);
    tr.append(td);
    body.append(tr);
  }
  table.hidden = state.texts.size === 0;
}

async function addText(name, buffer) {
  state.texts.set(name, { name, buffer });
  renderTexts();
  if (!state.model) return; // sent again once a model is loaded
  worker.postMessage({ type: "addText", name, buffer: buffer.slice(0) });
}

async function addFiles(files) {
  if (!state.model) showError("Load a base model first: the text is counted in its tokens.");
  for (const f of files) addText(f.name, await f.arrayBuffer());
}

function updateButtons() {
  const hasText = [...state.texts.values()].some((t) => t.tokens);
  $("start").disabled = !state.model || !hasText || (state.training && !state.paused);
  $("start").textContent = state.paused ? "Resume" : "Start";
  $("pause").disabled = !state.training || state.paused;
  $("stop").disabled = !state.training;
  $("download").disabled = !state.adapter || state.training;
  $("sample").disabled = !state.model || (state.training && !state.paused);
}

// ---- the loss chart (canvas; drawing only) -------------------------------------------------
function drawChart() {
  const c = $("chart");
  const g = c.getContext("2d");
  const w = c.width, h = c.height, pad = 36;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#999"; g.lineWidth = 1;
  g.strokeRect(pad, 8, w - pad - 8, h - pad - 8);
  const train = state.points.filter((p) => p.train_loss != null).map((p) => [p.step, p.train_loss]);
  const val = state.points.filter((p) => p.val_loss != null).map((p) => [p.step, p.val_loss]);
  c.dataset.points = String(train.length + val.length);
  const all = [...train, ...val].map(([, y]) => y);
  if (!all.length) return;
  const lo = Math.min(...all), hi = Math.max(...all), span = hi - lo || 1;
  const x = (s) => pad + ((w - pad - 8) * s) / Math.max(1, state.total);
  const y = (v) => 8 + (h - pad - 8) * (1 - (v - lo) / span);
  g.fillStyle = "#444"; g.font = "12px sans-serif";
  g.fillText(hi.toFixed(2), 2, 16); g.fillText(lo.toFixed(2), 2, h - pad);
  g.fillText("step", w / 2, h - 8);
  for (const [points, color] of [[train, "#2563eb"], [val, "#dc2626"]]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    points.forEach(([s, v], i) => (i ? g.lineTo(x(s), y(v)) : g.moveTo(x(s), y(v))));
    g.stroke();
    g.fillStyle = color;
    for (const [s, v] of points) g.fillRect(x(s) - 2, y(v) - 2, 4, 4);
  }
}

// ---- the person's actions ----------------------------------------------------------------------
function startWorker() {
  document.body.dataset.ready = "";
  // ?threads=N (N > 1): the CPU backend's multi-threaded build (see worker.js).
  const threads = Number(new URLSearchParams(location.search).get("threads")) || 1;
  worker.postMessage({ type: "init", backend: $("backend-choice").value, threads });
}
$("backend-choice").onchange = () => {
  showError("Reload the page to switch the compute backend (a GPU device can be started once per page).");
  localStorage.setItem("webtune-backend", $("backend-choice").value);
};
$("backend-choice").value = new URLSearchParams(location.search).get("backend")
  || localStorage.getItem("webtune-backend") || "auto";
$("load-default").onclick = () => worker.postMessage({ type: "loadModel", source: "default" });
$("model-files").onchange = async (e) => {
  const files = [...e.target.files];
  if (!files.length) return;
  const payload = await Promise.all(files.map(async (f) => ({ name: f.name, buffer: await f.arrayBuffer() })));
  const folder = files[0].webkitRelativePath?.split("/")[0] || files.find((f) => f.name.endsWith(".gguf"))?.name || "model";
  worker.postMessage({ type: "loadModel", source: "files", files: payload, modelName: folder }, payload.map((p) => p.buffer));
  e.target.value = "";
};
$("model-url-form").onsubmit = (e) => {
  e.preventDefault();
  const url = $("model-url").value.trim();
  if (url) worker.postMessage({ type: "loadModel", source: "url", url });
};
$("text-files").onchange = async (e) => { await addFiles([...e.target.files]); e.target.value = ""; };
const zone = $("drop-zone");
zone.ondragover = (e) => { e.preventDefault(); zone.classList.add("over"); };
zone.ondragleave = () => zone.classList.remove("over");
zone.ondrop = async (e) => { e.preventDefault(); zone.classList.remove("over"); await addFiles([...e.dataTransfer.files]); };
zone.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("text-files").click(); } };
$("settings").oninput = () => requestPlan();
$("start").onclick = () => {
  if (state.paused) { state.paused = false; worker.postMessage({ type: "resume" }); updateButtons(); return; }
  state.training = true; updateButtons();
  worker.postMessage({ type: "start", settings: settings(), samplePrompt: $("sample-prompt").value });
};
$("pause").onclick = () => worker.postMessage({ type: "pause" });
$("stop").onclick = () => worker.postMessage({ type: "stop" });
$("sample").onclick = () => worker.postMessage({ type: "sample", prompt: $("sample-prompt").value, withAdapter: state.adapter });
$("download").onclick = () => worker.postMessage({ type: "export", dtype: $("f16").checked ? "f16" : "f32" });

drawChart();
startWorker();
