// The page: renders the worker's state and forwards the person's actions to it. No model math
// here; the Rust core (in worker.js) does all of it.

import * as store from "./store.js";
import { toWorker } from "./protocol.js";
import { parseModelId } from "./hub.js";
import { lossChart, summary as chartSummary } from "./chart.js";
import { isolate } from "./isolation.js";

/** The element with this id (the page's own: index.html). @param {string} id @returns {any} */
const $ = (id) => document.getElementById(id);
let worker = null;
/** @param {import("./protocol.js").ToWorker} msg @param {Transferable[]} [transfer] */
const send = (msg, transfer) => toWorker(worker, msg, transfer);
const state = {
  model: null,
  texts: new Map(),
  training: false,
  paused: false,
  points: [],
  total: 1,
  adapter: false,
  // Where the loaded model came from, so that a saved run can load it again.
  modelSource: null,
  pendingModelSource: null,
  // A saved run being resumed: sent to the worker once the model and its texts are back.
  resuming: null,
  // The backend the worker runs (after a lost GPU: "cpu").
  backend: "auto",
  // The run this tab trains (store.js's id; kept across reloads of this tab).
  runId: sessionStorage.getItem("webtune-run"),
  // An adapter opened for the next run to continue (its info from the core), or null.
  opened: null,
  // The wasm module's memory in MB after the last chat answer (tests/bench/soak.mjs reads it).
  memoryMb: null,
  // The core's limits on settings (crate/core/src/limits.rs), once the worker is ready.
  /** @type {any} */
  limits: null,
  // Whether the page is cross-origin isolated (isolation.js): the CPU's threads need it.
  /** @type {boolean | null} */
  isolated: null,
};
// Read by the end-to-end test and the benchmark (tests/), which drive this page.
/** @type {any} */ (window).webtuneState = state;

// ---- messages from the worker ---------------------------------------------------------------
const handlers = {
  async ready({ backend, limits, defaults }) {
    showLimits(limits);
    if (!state.defaults) applyDefaults(defaults);
    defaultBaseF16(backend.kind);
    const threads =
      backend.threads > 1
        ? `, ${backend.threads} threads`
        : state.isolated === false && (navigator.hardwareConcurrency || 1) > 1
          ? ", one thread (this page is not cross-origin isolated: its server sends no COOP/COEP headers, and no service worker could add them)"
          : ", one thread";
    $("backend-status").textContent =
      backend.kind === "webgpu"
        ? `Running on WebGPU: ${backend.adapter}.`
        : `Running on the CPU${threads}${backend.adapter ? ` (WebGPU adapter: ${backend.adapter})` : ""}: ${backend.reason}.`;
    document.body.dataset.backend = backend.kind;
    // Whether "16-bit weights" applies here: the CPU, or a GPU with 16-bit shaders (shader-f16).
    document.body.dataset.f16 = backend.f16_weights ? "1" : "0";
    document.body.dataset.ready = "1";
    updateButtons();
    if (reloadingModel) {
      // A fresh worker for the same model in the other precision (16-bit weights changed).
      reloadingModel = false;
      loadModelFrom(state.modelSource);
      return;
    }
    const run = state.runId ? await savedRun(state.runId) : null;
    if (run && recovering) {
      recovering = false;
      autoResumedFrom = run.checkpoint.step;
      resumeRun(run);
    } else if (recovering) {
      // Nothing saved to resume: put the model and the texts back, so the page stays usable.
      recovering = false;
      if (state.modelSource) loadModelFrom(state.modelSource);
    } else {
      await offerInterrupted();
    }
    renderRuns();
  },
  modelProgress({ loaded, total, fromCache, parsing, file }) {
    const bar = $("model-progress");
    bar.hidden = false;
    bar.max = total || 1;
    bar.value = total ? loaded : 0;
    showStatus(
      "model",
      parsing
        ? "Reading the model…"
        : `Loading the model${file ? ` (${file})` : ""}${fromCache ? " from the browser cache" : ""}: ${mb(loaded)}${total ? ` of ${mb(total)}` : ""}`,
    );
  },
  model({ info, commit }) {
    state.model = info;
    state.modelSource = state.pendingModelSource ?? state.modelSource;
    // A model from the hub is kept by the commit it came from: a saved run loads the same again.
    if (state.modelSource?.source === "hub" && commit) state.modelSource = { ...state.modelSource, revision: commit };
    $("model-progress").hidden = true;
    showStatus("model", "");
    const dl = $("model-info");
    dl.hidden = false;
    drawTargets(info.targets, info.default_targets);
    // The model reads at most its context at once: the sequence length stays within it.
    const seqLen = $("settings").elements.seq_len;
    seqLen.max = String(Math.min(Number(state.limits?.max_seq_len ?? Infinity), info.context_length));
    if (Number(seqLen.value) > info.context_length) seqLen.value = String(info.context_length);
    dl.replaceChildren(
      ...[
        ["Model", info.name],
        // What adapters name as their base (base_model_name_or_path), for PEFT to load it by.
        ...(info.hub_id && info.hub_id !== info.name ? [["Hugging Face id", info.hub_id]] : []),
        ["Family", info.family],
        [
          "Parameters",
          info.parameters >= 1e6 ? `${(info.parameters / 1e6).toFixed(1)} M` : info.parameters.toLocaleString(),
        ],
        ["Layers", info.layers],
        ["Vocabulary", info.vocab_size.toLocaleString()],
        ["Context", info.context_length.toLocaleString()],
        ["Frozen weights", info.base_f16 ? "16-bit" : "32-bit"],
      ].flatMap(([k, v]) => [el("dt", k), el("dd", String(v))]),
    );
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
    if (state.resuming) {
      if (![...state.texts.values()].every((x) => x.tokens != null || x.skipped)) return;
      // The model and every text are back: continue the saved run.
      const { setup, checkpoint } = state.resuming;
      state.resuming = null;
      state.training = true;
      updateButtons();
      send({
        type: "restore",
        bytes: checkpoint.bytes,
        samplePrompt: setup.samplePrompt,
        saveMemory: !!$("settings").elements.recompute?.checked,
      });
      return;
    }
    requestPlan();
  },
  textRemoved() {
    requestPlan();
  },
  plan({ plan, presets }) {
    renderPlan(plan);
    renderPrompts(plan.val_prompts);
    renderPresetEstimates(presets);
  },
  measuring() {
    $("plan").textContent += " · measuring this machine's speed…";
  },
  started({ plan, history, restored: resumed }) {
    renderPlan(plan);
    state.training = true;
    state.paused = false;
    state.points = history || [];
    state.total = history?.at(-1)?.total_steps || 1;
    $("sample-after").textContent = "";
    drawChart();
    updateButtons();
    const at = history?.at(-1)?.step ?? 0;
    $("train-status").textContent = resumed ? `Resuming at step ${at}…` : "Starting…";
    announce(resumed ? `Training resumes at step ${at}.` : "Training started.");
    document.body.dataset.resumedAt = resumed ? String(at) : "";
  },
  async checkpoint({ bytes, step, total }) {
    if (!state.runId) return;
    try {
      await store.saveCheckpoint(state.runId, { bytes, step, total });
      document.body.dataset.checkpoint = String(step);
    } catch (e) {
      showNotice(
        storageProblem(
          e,
          `Progress at step ${step} could not be saved; the run goes on, and a reload ` +
            "would resume it from its last saved step",
        ),
      );
    }
  },
  crashed({ message, gpuLost }) {
    recover(message, gpuLost);
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
    if (p.val_loss != null)
      announce(
        p.step === 0
          ? `Before training: validation loss ${p.val_loss.toFixed(3)}.`
          : `Step ${p.step} of ${p.total_steps}: validation loss ${p.val_loss.toFixed(3)}.`,
      );
    drawChart();
    renderLossLine();
  },
  paused() {
    state.paused = true;
    $("train-status").textContent += " · paused";
    updateButtons();
    if (switchAfterPause) {
      // Paused (and saved) to move to another backend: continue there.
      const backend = switchAfterPause;
      switchAfterPause = null;
      recovering = true;
      state.training = false;
      state.paused = false;
      showNotice(
        `Moving the run to ${backend === "cpu" ? "the CPU" : backend === "webgpu" ? "WebGPU" : "the automatic backend"}…`,
      );
      startWorker(backend);
    }
  },
  done({ stopped, failed, adapter }) {
    state.training = false;
    state.paused = false;
    // After a failed (non-finite) step the adapter from before it is kept and can be downloaded.
    state.adapter = !!adapter;
    const last = state.points.at(-1);
    const first = state.points.find((p) => p.val_loss != null);
    if (state.runId) {
      store
        .saveRun(state.runId, {
          status: failed ? "failed" : stopped ? "stopped" : "finished",
          step: last?.step ?? 0,
          valLoss: lastVal(),
          firstValLoss: first?.val_loss ?? null,
        })
        .catch((e) => showNotice(storageProblem(e, "The run's end could not be recorded")));
    }
    renderLossLine();
    if (!failed) {
      $("train-status").textContent =
        `${stopped ? "Stopped" : "Finished"} after ${last ? last.step : 0} steps` +
        (lastVal() != null
          ? `: validation loss ${lastVal().toFixed(3)} (perplexity ${Math.exp(lastVal()).toFixed(1)})`
          : ".");
      announce($("train-status").textContent);
    }
    document.body.dataset.done = "1";
    updateButtons();
  },
  // The ended run's adapter and last state, kept with it until the person deletes the run.
  async kept({ zip, checkpoint, step, total }) {
    const id = state.runId;
    if (!id) return;
    try {
      if (checkpoint) await store.saveCheckpoint(id, { bytes: checkpoint, step, total });
      if (zip) {
        await store.saveAdapter(id, zip);
        await store.saveRun(id, { adapterBytes: zip.byteLength });
      }
      document.body.dataset.kept = id;
    } catch (e) {
      showNotice(storageProblem(e, "The finished run's adapter could not be kept in this browser: download it now"));
    } finally {
      store.release(id);
      renderRuns();
    }
  },
  sample({ adapted, text, prompt }) {
    $(adapted ? "sample-after" : "sample-before").textContent = prompt + text;
  },
  chatText({ id, adapted, text, done, memoryMb }) {
    // The module's memory after an answer (its peak so far): the soak test reads it.
    if (memoryMb != null) state.memoryMb = memoryMb;
    if (id !== chatId) return;
    const out = $(adapted ? "chat-adapted" : "chat-base");
    out.textContent = text;
    if (done) out.dataset.done = "1";
    if (done && (adapted || (!state.adapter && !state.opened))) {
      $("chat-status").textContent = "Answered.";
      $("chat-ask").disabled = false;
    }
  },
  adapterOpened({ info }) {
    state.opened = info;
    const line = $("opened-adapter");
    line.hidden = !info;
    if (info) {
      $("opened-text").textContent =
        `The next run continues ${info.name} (rank ${info.lora.r}, alpha ${info.lora.alpha}, ` +
        `${info.lora.targets.join(", ")}${info.optimizer_state ? ", with its optimizer state" : ""}): ` +
        "its settings replace the rank, alpha and layers above. Compare it with the base below.";
    }
    document.body.dataset.opened = info ? "1" : "";
    updateButtons();
    requestPlan();
  },
  adapter({ zip, gguf, merged, recipe, name }) {
    const date = new Date().toISOString().slice(0, 10);
    const stem = (state.model?.name || "model").replace(/[^A-Za-z0-9._-]+/g, "-");
    if (recipe) save(recipe, `${stem}-recipe-${date}.zip`, "application/zip");
    else
      save(
        zip ?? gguf ?? merged,
        merged ? name : `${stem}-lora-${date}.${zip ? "zip" : "gguf"}`,
        zip ? "application/zip" : "application/octet-stream",
      );
  },
  error({ context, message }) {
    showError(`${contextWords[context] || "Something went wrong"}: ${message}`);
    if (context === "loadModel") {
      $("model-progress").hidden = true;
      showStatus("model", "");
    }
    if (context === "start" || context === "restore") {
      state.training = false;
      state.resuming = null;
      updateButtons();
      if (context === "start" && state.runId) store.deleteRun(state.runId).then(renderRuns);
    }
  },
};

const contextWords = {
  init: "The compute backend could not start",
  loadModel: "The model could not be loaded",
  addText: "The text could not be added",
  plan: "These settings do not work",
  start: "Training could not start",
  training: "Training failed",
  restore: "The saved run could not be resumed",
  sampling: "The sample could not be generated",
  export: "The adapter could not be saved",
  chat: "The answer could not be generated",
  openAdapter: "The adapter could not be opened",
  "keeping the run": "The finished run could not be kept",
};

// ---- the worker, and starting a fresh one when it dies -------------------------------------
// Set while a fresh worker starts after a crash: once ready it resumes the saved run.
let recovering = false;

// Crashes posted by the module itself, from any of its threads (crate/wasm/src/crash.rs): a pool
// worker's crash reaches neither worker.js nor worker.onerror. A channel per worker, so that other
// tabs of the page and a terminated worker are not heard.
let crashChannel = null;

function startWorker(backend) {
  worker?.terminate();
  crashChannel?.close();
  const channelName = `webtune-crash-${self.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random()}`}`;
  crashChannel = new BroadcastChannel(channelName);
  crashChannel.onmessage = ({ data }) => recover(data?.message || "a worker of the module crashed");
  state.backend = backend;
  state.model = null;
  document.body.dataset.ready = "";
  worker = new Worker("worker.js", { type: "module" });
  worker.onmessage = ({ data }) => {
    heard();
    handlers[data.type]?.(data);
  };
  heard(true);
  worker.onerror = (e) => {
    e.preventDefault?.();
    recover(e.message || "the worker stopped");
  };
  // The CPU backend runs on every core (the multi-threaded build, see worker.js); ?threads=N
  // sets the pool's size, ?threads=1 the one-thread build.
  const threads =
    Number(new URLSearchParams(location.search).get("threads")) ||
    Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 8));
  // ?memory=MiB: the memory a run may take, below the backend's own limit (a machine with
  // little memory to spare); the page refuses what its estimate puts over it.
  const memoryLimit = Number(new URLSearchParams(location.search).get("memory")) * 2 ** 20 || null;
  send({ type: "init", backend, threads, crashChannel: channelName, memoryLimit });
}

// The step the last automatic restart resumed from: a crash before the run saved a later step
// would only repeat (a run that runs out of memory at the same point), so the page stops
// restarting by itself and leaves the saved run to the Resume button.
let autoResumedFrom = null;

// The module crashed (a trap), the worker died, or the GPU was lost: start a fresh worker (on
// the CPU when the GPU is gone) and continue the run from its last checkpoint.
function recover(message, gpuLost = false) {
  if (recovering) return;
  const wasTraining = state.training;
  const saved = Number(document.body.dataset.checkpoint ?? NaN);
  const again = wasTraining && !gpuLost && autoResumedFrom !== null && !(saved > autoResumedFrom);
  autoResumedFrom = null;
  recovering = !again;
  state.training = false;
  state.paused = false;
  const backend = gpuLost ? "cpu" : state.backend;
  if (gpuLost) $("backend-choice").value = "cpu";
  if (again) {
    const memory = /out of memory|allocation/i.test(message);
    showNotice(
      `The compute module crashed again (${message}) before the run got past its saved step: ` +
        "restarting would only repeat it, so the page stopped. The run is saved: Resume tries again" +
        (memory ? "; it ran out of memory, so turn on Save memory (in the settings) first." : "."),
    );
    document.body.dataset.crashLoop = "1";
  } else {
    showNotice(
      `${gpuLost ? "The GPU stopped working" : "The compute module crashed"} (${message}). ` +
        `Started again${gpuLost ? " on the CPU" : ""}${wasTraining ? "; the run continues from its last saved step" : ""}.`,
    );
  }
  document.body.dataset.recovered = String(Number(document.body.dataset.recovered || 0) + 1);
  document.body.dataset.done = "";
  $("backend-status").textContent = "Starting again…";
  updateButtons();
  startWorker(backend);
}

// A module that hangs instead of trapping (a pool thread that died without running a hook, so
// the session's worker waits for it forever) says nothing: while a run trains, a worker silent
// for much longer than its longest silence so far (10x, at least ten minutes; `?watchdog=S`
// sets that floor, for tests) is taken as crashed.
const WATCHDOG_FLOOR = 1000 * (Number(new URLSearchParams(location.search).get("watchdog")) || 600);
let lastHeard = performance.now();
let longestSilence = 0;
function heard(fresh = false) {
  const now = performance.now();
  if (fresh) longestSilence = 0;
  else longestSilence = Math.max(longestSilence, now - lastHeard);
  lastHeard = now;
}
setInterval(() => {
  if (!state.training || state.paused || recovering) {
    lastHeard = performance.now();
    return;
  }
  const silent = performance.now() - lastHeard;
  if (silent > Math.max(WATCHDOG_FLOOR, 10 * longestSilence)) {
    recover(`the compute module stopped responding: nothing for ${Math.round(silent / 1000)} s`);
  }
}, 1000);

// ---- helpers ------------------------------------------------------------------------------
function el(tag, text) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = text;
  return e;
}
function mb(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(1)} kB`;
}
// Bytes as core's memory estimate words them (memory.rs `human`): MiB and GiB.
function mib(n) {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
}
function duration(s) {
  s = Math.round(s);
  return s >= 3600
    ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
    : s >= 60
      ? `${Math.floor(s / 60)} min ${s % 60} s`
      : `${s} s`;
}
function lastVal() {
  for (let i = state.points.length - 1; i >= 0; i--)
    if (state.points[i].val_loss != null) return state.points[i].val_loss;
  return null;
}
// 2 GB of memory or less, as the browser reports it: the memory-saving settings start on.
const deviceMemory = /** @type {any} */ (navigator).deviceMemory;
const littleMemory = (deviceMemory ?? 8) <= 2;
// The form starts from the Rust core's defaults (the same the command line's flags have).
function applyDefaults(d) {
  if (!d) return;
  state.defaults = d;
  renderPresets(d.presets);
  const form = $("settings").elements;
  const { data, lora, train, optim, exec } = d.spec;
  const values = {
    rank: lora.r,
    alpha: lora.alpha,
    lr: optim.lr,
    steps: train.steps,
    seq_len: data.seq_len,
    batch_size: train.batch_size,
    checkpoint_every: train.checkpoint_every,
  };
  for (const [name, value] of Object.entries(values)) if (form[name]) form[name].value = String(value);
  // "Save memory" starts on where the browser says the machine has little memory (2 GB or less:
  // SmolLM2's run holds ~1.2 GB of wasm memory without it, ~0.65 GB with it).
  if (form.recompute) form.recompute.checked = !!exec.recompute || littleMemory;
  // No targets: the model family's defaults, which the boxes show until a model draws its own.
  if (lora.targets.length) {
    for (const box of document.querySelectorAll("input[name=target]"))
      /** @type {HTMLInputElement} */ (box).checked = lora.targets.includes(
        /** @type {HTMLInputElement} */ (box).value,
      );
  }
}

// "16-bit weights" starts on where it is the better choice: on the CPU backend, whose products
// on 16-bit weights run in 16-bit integers (~1.4x faster a step than 32-bit, ~260 MB less for
// SmolLM2; README "Speed"), and where the browser says the machine has little memory. On WebGPU
// it starts off (16-bit there is unmeasured in a browser). The model reads the box as it loads,
// and this runs before any model does; a person's own choice stays, on any backend.
let baseF16Chosen = false;
function defaultBaseF16(kind) {
  const box = $("settings").elements.base_f16;
  if (!box || baseF16Chosen || !state.defaults) return;
  box.checked = !!state.defaults.spec.exec.base_f16 || kind === "cpu" || littleMemory;
}

// One checkbox per projection the model's family has; the defaults checked.
function drawTargets(targets, defaults) {
  // A run being resumed keeps its own choice on display.
  const resumed = state.resuming?.setup.form.target;
  const wanted = resumed ?? defaults;
  $("targets").replaceChildren(
    ...targets.map((name) => {
      const label = el("label");
      const box = Object.assign(el("input"), {
        type: "checkbox",
        name: "target",
        value: name,
        checked: wanted.includes(name),
      });
      label.append(box, ` ${name}`);
      return label;
    }),
  );
}

function showNotice(text) {
  const box = $("notice");
  box.hidden = false;
  box.textContent = text;
}
function showLimits(l) {
  if (!l) return;
  const form = $("settings");
  // The form's ranges are the core's (crate/core/src/limits.rs), never copies of them.
  const set = (name, min, max) => {
    const input = form.elements[name];
    if (input) Object.assign(input, min == null ? { max: String(max) } : { min: String(min), max: String(max) });
  };
  set("steps", 1, l.max_steps);
  set("batch_size", 1, l.max_batch_size);
  set("seq_len", l.min_seq_len, l.max_seq_len);
  set("rank", 1, l.max_rank);
  set("lr", null, l.max_learning_rate);
  set("checkpoint_every", 0, l.max_steps);
  $("limits").textContent =
    `Limits: steps ≤ ${l.max_steps.toLocaleString()}, rank ≤ ${l.max_rank}, batch size ≤ ${l.max_batch_size}, ` +
    `sequence length ≤ ${l.max_seq_len}, batch size × sequence length ≤ ${l.max_batch_tokens.toLocaleString()}, ` +
    `learning rate ≤ ${l.max_learning_rate}; text files up to ${Math.round(l.max_text_bytes / 2 ** 20)} MB each.`;
  state.maxTextBytes = l.max_text_bytes;
  state.limits = l;
}
function showError(text) {
  const box = $("error");
  box.hidden = false;
  box.replaceChildren(el("span", text));
  const close = el("button", "Dismiss");
  close.type = "button";
  close.onclick = () => {
    box.hidden = true;
  };
  box.append(close);
}
// A status line under the model section (load progress); empty text removes it.
function showStatus(where, text) {
  const section = $(`${where}-section`);
  section.querySelector(".status")?.remove();
  if (text) section.append(Object.assign(el("p", text), { className: "status" }));
}

// The run spec (crate/core/src/spec.rs: { data, lora, train, optim, exec }) from the form; what
// the form leaves out takes the core's defaults.
function settings() {
  const f = new FormData($("settings"));
  const num = (k) => Number(f.get(k));
  const products = new URLSearchParams(location.search).get("products");
  return {
    data: {
      seq_len: num("seq_len"),
      // Chat data: the answers only, or every token ("train on the whole text").
      train_on: f.get("train_on") || undefined,
      // A file named as the validation set, else the core's share.
      ...(f.get("val_file") ? { val_file: f.get("val_file") } : {}),
    },
    lora: { r: num("rank"), alpha: num("alpha"), targets: f.getAll("target") },
    // The evaluation schedule: the core's defaults (a small share of the run). The core says
    // when a checkpoint is due; the worker stores it (store.js).
    train: {
      steps: num("steps"),
      batch_size: num("batch_size"),
      ...(f.has("checkpoint_every") ? { checkpoint_every: num("checkpoint_every") } : {}),
    },
    optim: { lr: num("lr") },
    exec: {
      // "Save memory": activation recomputation.
      recompute: f.has("recompute"),
      // The weights as the model was loaded (the setting reloads the model when it changes).
      base_f16: !!state.model?.base_f16,
      // ?products=widened: the 16-bit weights' products widened to f32 instead of in 16-bit
      // integers (a comparison for developers).
      ...(products ? { products } : {}),
    },
  };
}

function requestPlan() {
  if (state.model && [...state.texts.values()].some((t) => t.tokens)) {
    const presets = (state.defaults?.presets ?? []).map((p) => ({ name: p.name, spec: presetSpec(p) }));
    send({ type: "plan", spec: settings(), presets });
  } else $("plan").textContent = state.model ? "Add some text to see the plan." : "";
  updateButtons();
}

// ---- presets (the core's: crate/core/src/defaults.rs): what they set of the form -------------
// A preset sets the rank, alpha, targets, learning rate and steps, and the download's precision;
// the data and how the run computes stay as the form has them.
const initialTargets = [...document.querySelectorAll("input[name=target]:checked")].map(
  (b) => /** @type {HTMLInputElement} */ (b).value,
);
function presetTargets(p) {
  const boxes = [...document.querySelectorAll("input[name=target]")].map(
    (b) => /** @type {HTMLInputElement} */ (b).value,
  );
  const t = p.spec.lora.targets;
  if (t.includes("all-linear")) return boxes;
  return t.length ? t : (state.model?.default_targets ?? initialTargets);
}
function presetSpec(p) {
  const spec = settings();
  const { r, alpha } = p.spec.lora;
  return {
    ...spec,
    lora: { ...spec.lora, r, alpha, targets: presetTargets(p) },
    train: { ...spec.train, steps: p.spec.train.steps },
    optim: { ...spec.optim, lr: p.spec.optim.lr },
  };
}
function applyPreset(p) {
  const form = $("settings").elements;
  form.rank.value = String(p.spec.lora.r);
  form.alpha.value = String(p.spec.lora.alpha);
  form.lr.value = String(p.spec.optim.lr);
  form.steps.value = String(p.spec.train.steps);
  const targets = presetTargets(p);
  for (const box of document.querySelectorAll("input[name=target]"))
    /** @type {HTMLInputElement} */ (box).checked = targets.includes(/** @type {HTMLInputElement} */ (box).value);
  $("f16").checked = p.export_f16;
  requestPlan();
}
// The preset the form matches now, or null ("Custom").
function matchingPreset() {
  const f = new FormData($("settings"));
  const targets = new Set(f.getAll("target"));
  return (
    (state.defaults?.presets ?? []).find((p) => {
      const want = presetTargets(p);
      return (
        Number(f.get("rank")) === p.spec.lora.r &&
        Number(f.get("alpha")) === p.spec.lora.alpha &&
        Number(f.get("lr")) === p.spec.optim.lr &&
        Number(f.get("steps")) === p.spec.train.steps &&
        want.length === targets.size &&
        want.every((t) => targets.has(t))
      );
    }) ?? null
  );
}
function renderPresets(presets) {
  const radio = (value, label, description) => {
    const row = el("label");
    const input = Object.assign(el("input"), { type: "radio", name: "preset", value });
    const est = Object.assign(el("span"), { className: "estimate", id: `preset-estimate-${value}` });
    row.append(input, ` ${label}`, " ", est, el("small", description));
    return row;
  };
  $("presets").replaceChildren(
    el("legend", "Start from"),
    ...presets.map((p) => radio(p.name, p.label, p.description)),
    radio("custom", "Custom", "The settings below, as you set them."),
  );
  for (const input of $("presets").querySelectorAll("input")) {
    input.onchange = () => {
      const p = presets.find((x) => x.name === input.value);
      if (p) applyPreset(p);
    };
  }
  showPresetChoice();
}
function showPresetChoice() {
  const name = matchingPreset()?.name ?? "custom";
  for (const input of $("presets").querySelectorAll("input")) {
    const radio = /** @type {HTMLInputElement} */ (input);
    radio.checked = radio.value === name;
    radio.disabled = state.training || (radio.value === "custom" && name !== "custom");
  }
}
// Each preset's adapter size and, once this machine's speed is measured, its duration here.
function renderPresetEstimates(plans = []) {
  for (const { name, plan } of plans) {
    const p = state.defaults?.presets.find((x) => x.name === name);
    const out = $(`preset-estimate-${name}`);
    if (!p || !out || !plan) continue;
    const bytes = p.export_f16 ? plan.adapter_bytes_f16 : plan.adapter_bytes_f32;
    out.textContent =
      `(adapter ${mb(bytes)}` + (plan.estimated_secs != null ? `, about ${duration(plan.estimated_secs)} here)` : ")");
  }
}

function renderPlan(p) {
  state.plan = p;
  const share = Math.round(100 * (state.defaults?.spec.data.val_fraction ?? 0));
  const held = p.val_documents.length
    ? `${p.val_documents.length} file(s) held out for validation`
    : `the last ${share}% held out for validation`;
  const ex = p.examples;
  const examples =
    ex && (ex.train || ex.val)
      ? ` · chat data: ${ex.train.toLocaleString()} training and ${ex.val.toLocaleString()} validation examples` +
        (ex.truncated ? `, ${ex.truncated} cut to the sequence length` : "") +
        (ex.dropped ? `, ${ex.dropped} left out (their prompt fills the sequence length)` : "")
      : "";
  $("plan").textContent =
    `${p.trainable_parameters.toLocaleString()} trainable parameters · adapter ${mb(p.adapter_bytes_f32)} (f32) / ${mb(p.adapter_bytes_f16)} (f16) · ` +
    `${p.train_tokens.toLocaleString()} tokens learned, ${p.val_tokens.toLocaleString()} validation tokens (${held})${examples} · ${p.epochs.toFixed(2)} epochs` +
    (p.estimated_secs != null ? ` · about ${duration(p.estimated_secs)} on this machine` : "") +
    ` · memory ~${mib(p.memory.peak)}` +
    (p.memory.limit != null ? ` of the ${mib(p.memory.limit)} here` : "");
  // A run that would not fit: what would (Start would be refused with the same words).
  $("plan-memory").hidden = p.memory.fits;
  $("plan-memory").textContent = p.memory.fits ? "" : `This run ${p.memory.advice}.`;
}

// How a file was read, in words: "text", or chat data's records and examples.
function formatWords(t) {
  if (t.format === "text" || !t.format) return "text";
  const kinds = {
    messages: "chats",
    "share-gpt": "ShareGPT chats",
    "prompt-completion": "prompt / completion",
    alpaca: "instruction / output",
    columns: "two columns",
  };
  const what = (t.record_kinds ?? []).map((k) => kinds[k] ?? k).join(", ") || "records";
  const file = { "json-lines": "JSON Lines", json: "JSON", csv: "CSV" }[t.format] ?? t.format;
  return `${file}: ${what}`;
}

function renderTexts() {
  const table = $("text-table");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const t of state.texts.values()) {
    const tr = el("tr");
    const count =
      t.examples != null
        ? `${t.examples.toLocaleString()} examples, ${t.tokens.toLocaleString()} tokens`
        : t.tokens != null
          ? t.tokens.toLocaleString()
          : "–";
    const status = t.skipped
      ? `skipped: ${t.skipped}`
      : t.tokens != null
        ? t.problem_count
          ? `ready; ${t.problem_count} record(s) left out (below)`
          : "ready"
        : "reading…";
    const statusCell = el("td", status);
    statusCell.className = "status";
    const kindCell = el("td", t.tokens != null || t.skipped ? formatWords(t) : "");
    kindCell.className = "kind";
    tr.append(el("td", t.name), kindCell, el("td", count), statusCell);
    if (t.skipped) tr.className = "skipped";
    const td = el("td");
    const rm = el("button", "Remove");
    rm.type = "button";
    rm.setAttribute("aria-label", `Remove ${t.name}`);
    rm.onclick = () => {
      state.texts.delete(t.name);
      send({ type: "removeText", name: t.name });
      renderTexts();
    };
    td.append(rm);
    tr.append(td);
    body.append(tr);
    const details = fileDetails(t);
    if (details) {
      const row = el("tr");
      const cell = el("td");
      cell.colSpan = 5;
      cell.append(details);
      row.append(cell);
      row.className = "file-details";
      body.append(row);
    }
  }
  table.hidden = state.texts.size === 0;
  renderValFileChoice();
}

// Under a file of chat data: the columns to read (CSV), the records left out and why, and its
// first example as training sees it (the parts the model learns in full colour).
function fileDetails(t) {
  const parts = [];
  if (t.columns?.length) {
    const pick = (role, chosen) => {
      const select = el("select");
      select.setAttribute("aria-label", `${t.name}: the ${role} column`);
      select.append(...t.columns.map((c) => Object.assign(el("option", c), { value: c, selected: c === chosen })));
      return select;
    };
    const prompt = pick("prompt", t.chosenColumns?.prompt),
      response = pick("response", t.chosenColumns?.response ?? t.columns[1]);
    const apply = Object.assign(el("button", "Read these columns"), { type: "button" });
    apply.onclick = () => {
      const columns = { prompt: prompt.value, response: response.value };
      addText(t.name, t.buffer, { columns });
    };
    const line = el("p");
    line.className = "columns";
    line.append("Prompt column ", prompt, " response column ", response, " ", apply);
    parts.push(line);
  }
  if (t.problems?.length) {
    const list = el("ul");
    list.className = "problems";
    for (const p of t.problems) list.append(el("li", `line ${p.line}: ${p.message}`));
    if (t.problem_count > t.problems.length) list.append(el("li", `… and ${t.problem_count - t.problems.length} more`));
    const box = el("details");
    box.append(el("summary", `${t.problem_count} record(s) left out`), list);
    parts.push(box);
  }
  if (t.preview?.length) {
    const pre = el("pre");
    pre.className = "preview";
    for (const part of t.preview) {
      const span = el("span", part.text);
      span.className = part.trained ? "learned" : "context";
      pre.append(span);
    }
    const box = el("details");
    box.append(
      el(
        "summary",
        "First example, as training sees it (what the model learns in full colour; the rest it only reads)",
      ),
      pre,
    );
    parts.push(box);
  }
  if (!parts.length) return null;
  const div = el("div");
  div.append(...parts);
  return div;
}

// "Validation": a share of the data, or one of the files added.
function renderValFileChoice() {
  const select = $("settings").elements.val_file;
  if (!select) return;
  const chosen = select.value;
  const usable = [...state.texts.values()].filter((t) => t.tokens && !t.skipped);
  const share = Math.round(100 * (state.defaults?.spec.data.val_fraction ?? 0.1));
  select.replaceChildren(
    Object.assign(el("option", `${share}% of the data`), { value: "" }),
    ...usable.map((t) => Object.assign(el("option", `the file ${t.name}`), { value: t.name })),
  );
  select.value = usable.some((t) => t.name === chosen) ? chosen : "";
}

async function addText(name, buffer, options) {
  const previous = state.texts.get(name);
  state.texts.set(name, { name, buffer, chosenColumns: options?.columns ?? previous?.chosenColumns });
  renderTexts();
  if (!state.model) return; // sent again once a model is loaded
  const columns = options?.columns ?? previous?.chosenColumns;
  send({ type: "addText", name, buffer: buffer.slice(0), options: columns ? { columns } : undefined });
}

async function addFiles(files) {
  if (state.training) {
    showError("Texts cannot change during a run: stop it first.");
    return;
  }
  if (!state.model) showError("Load a base model first: the text is counted in its tokens.");
  for (const f of files) {
    // Not read at all above the limit: a huge file would fill the page's memory first.
    if (state.maxTextBytes && f.size > state.maxTextBytes) {
      state.texts.set(f.name, {
        name: f.name,
        skipped: `the file is ${Math.round(f.size / 2 ** 20)} MB, more than the ${Math.round(state.maxTextBytes / 2 ** 20)} MB a text file may have; split it into smaller files`,
      });
      renderTexts();
      continue;
    }
    addText(f.name, await f.arrayBuffer());
  }
}

function updateButtons() {
  showPresetChoice();
  // During a run (paused too) the model and the texts stay as they are: the run depends on them.
  const locked = state.training || !!state.resuming;
  for (const id of ["load-default", "model-files", "model-folder", "model-url", "text-files"]) $(id).disabled = locked;
  $("model-url-form").querySelector("button").disabled = locked;
  for (const b of document.querySelectorAll("#text-table button"))
    /** @type {HTMLButtonElement} */ (b).disabled = locked;
  // "16-bit weights" needs a backend that holds f16: the CPU, or WebGPU with shader-f16 (a GPU
  // without it loads the model in 32-bit).
  const noF16 = document.body.dataset.f16 === "0";
  for (const input of $("settings").elements) input.disabled = locked || (noF16 && input.name === "base_f16");
  const hasText = [...state.texts.values()].some((t) => t.tokens);
  $("start").disabled = !state.model || !hasText || (state.training && !state.paused);
  $("start").textContent = state.paused ? "Resume" : "Start";
  $("pause").disabled = !state.training || state.paused;
  $("stop").disabled = !state.training;
  $("download").disabled = !state.adapter || state.training;
  $("download-gguf").disabled = !state.adapter || state.training;
  $("download-merged").disabled = !state.adapter || state.training;
  $("download-recipe").disabled = !state.adapter || state.training;
  $("sample").disabled = !state.model || (state.training && !state.paused);
  $("chat-ask").disabled = !state.model || (state.training && !state.paused);
  $("adapter-files").disabled = locked || !state.model;
  $("close-adapter").disabled = locked;
  // An opened adapter's LoRA settings are the run's: the form's are not used.
  for (const name of ["rank", "alpha", "target"]) {
    const inputs = $("settings").elements[name];
    for (const input of inputs instanceof RadioNodeList ? inputs : [inputs])
      if (input) input.disabled ||= !!state.opened;
  }
}

// ---- the loss chart (web/chart.js draws it) ---------------------------------------------------
const chart = lossChart($("chart"), $("chart-tip"));
function drawChart() {
  chart.update(state.points, state.total);
  $("chart-summary").textContent = chartSummary(state.points);
}

// What a screen reader hears: a run's start, each evaluation, its end and errors, not every step.
function announce(text) {
  $("announce").textContent = text;
}

// ---- the person's actions ----------------------------------------------------------------------
$("backend-choice").onchange = () => switchBackend($("backend-choice").value);
$("backend-choice").value =
  new URLSearchParams(location.search).get("backend") || localStorage.getItem("webtune-backend") || "auto";

// Another backend: a fresh worker. A run moves with its checkpoint (a pause saves one).
function switchBackend(backend) {
  localStorage.setItem("webtune-backend", backend);
  if (state.training && !state.paused) {
    switchAfterPause = backend;
    send({ type: "pause" });
    return;
  }
  recovering = state.training || !!state.modelSource;
  state.training = false;
  state.paused = false;
  startWorker(backend);
}
let switchAfterPause = null;

// The model, by source: "default", { url }, or the files picked; its frozen weights in 16-bit
// as the settings say (the CPU backend keeps them so; WebGPU loads 32-bit regardless), or as a
// saved run being resumed had them.
function loadModelFrom(src, baseF16 = wantsBaseF16()) {
  state.pendingModelSource = src;
  if (src.source === "default") send({ type: "loadModel", source: "default", baseF16 });
  else if (src.source === "url") send({ type: "loadModel", source: "url", url: src.url, baseF16 });
  else if (src.source === "hub")
    send({ type: "loadModel", source: "hub", hub: HUB, id: src.id, file: src.file, revision: src.revision, baseF16 });
  else loadModelFiles(src.files, src.name, baseF16);
}
// Where models named by id come from: the Hugging Face hub, or a mirror of it (`?hub=URL`; the
// page's CSP must allow it: web/serve.py --allow-model-origin).
const HUB = new URLSearchParams(location.search).get("hub") || "https://huggingface.co";
const wantsBaseF16 = () => !!$("settings").elements.base_f16?.checked;

async function loadModelFiles(files, modelName, baseF16) {
  const payload = await Promise.all(files.map(async (f) => ({ name: f.name, buffer: await f.arrayBuffer() })));
  send(
    { type: "loadModel", source: "files", files: payload, modelName, baseF16 },
    payload.map((p) => p.buffer),
  );
}

// "16-bit weights" changed with a model loaded and nothing trained on it yet: the model loads
// again, in a fresh worker, since a wasm memory never shrinks (on the CPU the same worker would
// keep the 32-bit weights' pages; on WebGPU a fresh device starts without the old buffers). A run or an adapter holds the model as it is: the
// setting then applies to the next model loaded.
let reloadingModel = false;
function reloadForBaseF16() {
  if (!state.model || !state.modelSource || state.training || state.adapter || state.resuming) return;
  if (document.body.dataset.f16 !== "1" || !!state.model.base_f16 === wantsBaseF16()) return;
  reloadingModel = true;
  startWorker(state.backend);
  updateButtons();
  showStatus("model", `Loading the model again with ${wantsBaseF16() ? "16" : "32"}-bit weights…`);
}

// A saved run as resumeRun takes it: its record (with the model files kept for it) and its
// last checkpoint; null when either is gone.
async function savedRun(id) {
  const record = await store.run(id).catch(() => null);
  const checkpoint = record && (await store.checkpoint(id).catch(() => null));
  if (!record || !checkpoint) return null;
  const model = { ...record.model };
  if (model.source === "files" && model.modelKey) model.files = (await store.model(model.modelKey))?.files;
  return { id, setup: { ...record, model }, checkpoint };
}

// The interrupted run the banner offers (a run of this browser's that did not end and that no
// tab trains), when there is one.
let pendingRun = null;

// After a reload or in a new tab: the newest interrupted run is offered to resume; runs that
// other tabs train are theirs (named, never touched here).
async function offerInterrupted() {
  const open = (await store.runs()).filter((r) => r.status === "running" || r.status === "paused");
  const elsewhere = [];
  let offered = null;
  // This tab's own run first (a reload keeps its id), then the newest no tab trains.
  open.sort((a, b) => Number(b.id === state.runId) - Number(a.id === state.runId));
  for (const r of open) {
    if (await store.heldElsewhere(r.id)) elsewhere.push(r);
    else if (!offered) offered = r;
  }
  if (elsewhere.length) {
    showNotice(
      `${elsewhere.length === 1 ? "A run is" : `${elsewhere.length} runs are`} training in another tab of ` +
        `this page (${elsewhere.map((r) => r.model?.name).join(", ")}): each keeps its own progress.`,
    );
  }
  pendingRun = offered ? await savedRun(offered.id) : null;
  if (!pendingRun) return;
  const { setup, checkpoint } = pendingRun;
  // The run's own "Save memory" choice, which the person may change before Resume.
  const saveMemory = $("settings").elements.recompute;
  if (saveMemory && !document.body.dataset.crashLoop) saveMemory.checked = "recompute" in setup.form;
  $("resume-text").textContent =
    `A run was interrupted: ${setup.model.name}, saved at step ${checkpoint.step} of ${setup.total || checkpoint.total} ` +
    `(${new Date(checkpoint.savedAt).toLocaleString()}), with ${setup.texts.length} text file(s).` +
    (setup.model.source === "files" && !setup.model.files?.length ? " Open the same model files first." : "");
  $("resume-banner").hidden = false;
  document.body.dataset.pendingRun = String(checkpoint.step);
}

// Continue a saved run: its settings, its model, its texts, then its checkpoint.
function resumeRun(run) {
  const { setup } = run;
  $("resume-banner").hidden = true;
  delete document.body.dataset.crashLoop;
  if (setup.model.source === "files" && !setup.model.files?.length) {
    showError(
      "The model of that run was opened from files the browser did not keep: open the same files, then press Resume.",
    );
    return;
  }
  pendingRun = null;
  state.runId = run.id;
  sessionStorage.setItem("webtune-run", run.id);
  store.hold(run.id);
  store.saveRun(run.id, { status: "running" }).catch(() => {});
  for (const [name, value] of Object.entries(setup.form)) {
    const inputs = $("settings").elements[name];
    if (inputs instanceof RadioNodeList) for (const i of inputs) i.checked = value.includes(i.value);
    else if (inputs && inputs.type !== "checkbox") inputs.value = value;
  }
  // "Save memory" stays as shown (the run's own choice, or the person's before Resume): the
  // gradients are the same either way, so a run may switch (setSaveMemory).
  $("sample-prompt").value = setup.samplePrompt;
  state.texts = new Map(
    setup.texts.map((t) => [t.name, { name: t.name, buffer: t.buffer, chosenColumns: t.options?.columns }]),
  );
  state.resuming = run;
  renderTexts();
  updateButtons();
  // The base as the run trained on it (runs saved before the setting existed: 32-bit).
  loadModelFrom(setup.model, !!setup.baseF16);
}

// ---- the runs kept in this browser -------------------------------------------------------------
async function renderRuns() {
  const all = await store.runs();
  const body = $("runs-table").querySelector("tbody");
  body.replaceChildren();
  for (const r of all) {
    const tr = el("tr");
    const loss =
      r.valLoss != null
        ? `${r.firstValLoss != null ? `${r.firstValLoss.toFixed(3)} → ` : ""}${r.valLoss.toFixed(3)}`
        : "–";
    const status =
      {
        running: "interrupted",
        paused: "interrupted",
        finished: "finished",
        stopped: "stopped",
        failed: "stopped (not finite)",
      }[r.status] ?? r.status;
    tr.append(
      el("td", new Date(r.createdAt).toLocaleString()),
      el("td", r.model?.name ?? "?"),
      el("td", (r.texts ?? []).map((t) => t.name).join(", ")),
      el("td", `${r.step ?? 0} of ${r.total ?? "?"} · ${status}`),
      el("td", loss),
      el("td", r.adapterBytes ? mb(r.adapterBytes) : "–"),
    );
    const actions = el("td");
    const button = (text, label, fn) => {
      const b = Object.assign(el("button", text), { type: "button", onclick: fn });
      b.setAttribute("aria-label", `${label} (run of ${new Date(r.createdAt).toLocaleString()})`);
      actions.append(b, " ");
      return b;
    };
    if (r.adapterBytes) button("Download", "Download its adapter", () => downloadKept(r));
    if (r.adapterBytes) {
      button("Continue training", "Continue training its adapter", () => continueKept(r)).disabled =
        !state.model || state.training;
    }
    if ((r.status === "running" || r.status === "paused") && r.id !== state.runId) {
      button("Resume", "Resume it", async () => {
        const run = await savedRun(r.id);
        if (run) resumeRun(run);
      }).disabled = state.training;
    }
    button("Delete", "Delete it", async () => {
      if (r.id === state.runId && state.training) return;
      await store.deleteRun(r.id);
      if (pendingRun?.id === r.id) {
        $("resume-banner").hidden = true;
        pendingRun = null;
        document.body.dataset.pendingRun = "";
      }
      renderRuns();
    }).disabled = r.id === state.runId && state.training;
    tr.append(actions);
    tr.dataset.run = r.id;
    body.append(tr);
  }
  $("runs-table").hidden = all.length === 0;
  $("runs-empty").hidden = all.length > 0;
  const { usage, quota } = await store.usage();
  $("runs-storage").textContent =
    usage != null && quota ? `This browser holds ${mb(usage)} of webtune's data (it allows ${mb(quota)}).` : "";
}
store.onChange(() => renderRuns());

async function downloadKept(r) {
  const kept = await store.adapter(r.id);
  if (!kept) {
    showError("That run's adapter is no longer in this browser's storage.");
    return;
  }
  const stem = (r.model?.name || "model").replace(/[^A-Za-z0-9._-]+/g, "-");
  save(kept.zip, `${stem}-lora-${new Date(r.createdAt).toISOString().slice(0, 10)}.zip`, "application/zip");
}

// A kept run's adapter, with its optimizer state, becomes what the next run continues (on the
// model loaded now, which must be the one it trained on).
async function continueKept(r) {
  const saved = await store.checkpoint(r.id);
  if (!saved) {
    showError("That run's saved state is no longer in this browser's storage.");
    return;
  }
  send({ type: "openAdapter", files: [{ name: "checkpoint.safetensors", buffer: saved.bytes.slice().buffer }] });
}

// A storage failure in words: what could not be saved, and what to do (a full disk names what to
// delete).
function storageProblem(e, what) {
  return e instanceof store.StorageFull ? `${what}. ${e.message}` : `${what} (${e?.message ?? e}).`;
}

function save(bytes, name, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- asking both models ------------------------------------------------------------------------
let chatId = 0;
function ask() {
  const prompt = $("chat-prompt").value.trim();
  if (!prompt || !state.model) return;
  chatId += 1;
  const sampling = {
    temperature: Number($("chat-temperature").value) || 0,
    top_p: Number($("chat-top-p").value) || 1,
    max_new_tokens: state.defaults?.sample_tokens ? state.defaults.sample_tokens * 4 : 160,
  };
  for (const out of [$("chat-base"), $("chat-adapted")]) {
    out.textContent = "";
    delete out.dataset.done;
  }
  $("chat-status").textContent = "Answering…";
  $("chat-ask").disabled = true;
  send({ type: "chat", id: chatId, prompt, adapted: false, sampling });
  if (state.adapter || state.opened) send({ type: "chat", id: chatId, prompt, adapted: true, sampling });
  else $("chat-adapted").textContent = "(no adapter yet: train one, or open one)";
}

// Held-out prompts (chat data's validation examples): questions the model was not trained on.
function renderPrompts(prompts = []) {
  const box = $("chat-prompts");
  box.replaceChildren(
    ...prompts.map((p) =>
      Object.assign(el("button", p.length > 60 ? `${p.slice(0, 57)}…` : p), {
        type: "button",
        title: p,
        onclick: () => {
          $("chat-prompt").value = p;
        },
      }),
    ),
  );
  box.hidden = prompts.length === 0;
}

// The validation loss before training (the base) and now, in one line.
function renderLossLine() {
  const vals = state.points.filter((p) => p.val_loss != null);
  if (vals.length < 2) {
    $("loss-line").textContent = "";
    return;
  }
  const [a, b] = [vals[0].val_loss, vals.at(-1).val_loss];
  $("loss-line").textContent =
    `Validation loss ${a.toFixed(3)} → ${b.toFixed(3)} (perplexity ${Math.exp(a).toFixed(1)} → ${Math.exp(b).toFixed(1)}): ` +
    (b < a
      ? `${(100 * (1 - b / a)).toFixed(1)}% lower on text the adapter was not trained on.`
      : "no better on held-out text.");
}

function formValues() {
  const f = new FormData($("settings"));
  const out = {};
  for (const key of new Set(f.keys())) out[key] = key === "target" ? f.getAll(key) : f.get(key);
  return out;
}

$("load-default").onclick = () => loadModelFrom({ source: "default", name: "SmolLM2-135M-Instruct" });
$("model-files").onchange = async (e) => {
  const files = [.../** @type {HTMLInputElement} */ (e.target).files];
  if (!files.length) return;
  const folder =
    files[0].webkitRelativePath?.split("/")[0] || files.find((f) => f.name.endsWith(".gguf"))?.name || "model";
  /** @type {HTMLInputElement} */ (e.target).value = "";
  if (
    !$("resume-banner").hidden &&
    pendingRun?.setup.model.source === "files" &&
    !pendingRun.setup.model.files?.length
  ) {
    // The files of an interrupted run, opened again to resume it.
    pendingRun.setup.model.files = files;
    $("resume-banner").hidden = true;
    resumeRun(pendingRun);
    return;
  }
  loadModelFrom({ source: "files", name: folder, files });
};
$("model-folder").onchange = (e) => {
  const input = /** @type {HTMLInputElement} */ (e.target);
  const all = [...input.files];
  input.value = "";
  if (!all.length) return;
  const folder = all[0].webkitRelativePath.split("/")[0] || "model";
  // Only the files a model is read from, and those of the folder itself (not its subfolders):
  // a folder may hold other weights (PyTorch, ONNX) that need not be read.
  const top = all.filter((f) => f.webkitRelativePath.split("/").length === 2);
  const read = top.filter((f) => MODEL_FILE.test(f.name));
  const ggufs = top.filter((f) => f.name.toLowerCase().endsWith(".gguf"));
  if (!read.some((f) => f.name === "config.json") && ggufs.length === 1) {
    loadModelFrom({ source: "files", name: ggufs[0].name, files: ggufs });
  } else if (!read.some((f) => f.name === "config.json")) {
    showError(
      ggufs.length
        ? `${folder} holds ${ggufs.length} GGUF files: open the one to train with ("Open model files…")`
        : `${folder} has no config.json or GGUF file: not a model folder`,
    );
  } else {
    loadModelFrom({ source: "files", name: folder, files: read });
  }
};
// The files of a Hugging Face folder that the core reads (crate/core/src/base_model.rs).
const MODEL_FILE =
  /^(config\.json|tokenizer\.json|tokenizer_config\.json|vocab\.json|merges\.txt|.*\.safetensors|model\.safetensors\.index\.json)$/;
$("model-url-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("model-url").value.trim();
  if (!text) return;
  const id = /^[a-z]+:/i.test(text) ? null : parseModelId(text);
  if (id) loadModelFrom({ source: "hub", name: id.file ? `${id.id}/${id.file}` : id.id, ...id });
  else if (/^https?:\/\//i.test(text)) loadModelFrom({ source: "url", url: text, name: text });
  else showError(`"${text}" is neither a Hugging Face model id (org/name) nor an http(s) URL`);
};
$("resume-run").onclick = () => {
  if (pendingRun) resumeRun(pendingRun);
};
$("discard-run").onclick = async () => {
  if (pendingRun) await store.deleteRun(pendingRun.id);
  pendingRun = null;
  $("resume-banner").hidden = true;
  document.body.dataset.pendingRun = "";
  renderRuns();
};
// Leaving mid-run: the browser asks first (the run is saved every few steps all the same).
addEventListener("beforeunload", (e) => {
  if (state.training && !state.paused) {
    e.preventDefault();
    e.returnValue = "";
  }
});
$("text-files").onchange = async (e) => {
  await addFiles([.../** @type {HTMLInputElement} */ (e.target).files]);
  /** @type {HTMLInputElement} */ (e.target).value = "";
};
// The drop zone is for the pointer; "choose files…" in it is the keyboard's way in.
const zone = $("drop-zone");
zone.ondragover = (e) => {
  e.preventDefault();
  zone.classList.add("over");
};
zone.ondragleave = () => zone.classList.remove("over");
zone.ondrop = async (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  await addFiles([...e.dataTransfer.files]);
};
$("settings").oninput = () => requestPlan();
$("settings").elements.base_f16.onchange = () => {
  baseF16Chosen = true;
  reloadForBaseF16();
};
$("start").onclick = async () => {
  if (state.paused) {
    state.paused = false;
    send({ type: "continue" });
    updateButtons();
    return;
  }
  // Read before the form is locked (disabled fields are not in FormData).
  const spec = settings(),
    form = formValues();
  const samplePrompt = $("sample-prompt").value;
  state.training = true;
  updateButtons();
  $("resume-banner").hidden = true;
  pendingRun = null;
  // A run of its own: its settings, texts and where its model came from, so that it can start
  // again in a fresh page; this tab holds it until it ends.
  const id = store.newId();
  state.runId = id;
  sessionStorage.setItem("webtune-run", id);
  store.hold(id);
  const kept = await store.persist();
  $("storage-status").textContent = kept
    ? "This browser keeps your runs (persistent storage granted)."
    : "This browser may clear stored runs when it runs low on space: download adapters you want to keep.";
  try {
    const model = { ...state.modelSource };
    if (model.source === "files") {
      model.modelKey = await store.saveModelFiles(model.files);
      delete model.files;
    }
    const texts = [...state.texts.values()]
      .filter((t) => t.tokens && t.buffer)
      .map((t) => ({
        name: t.name,
        buffer: t.buffer,
        options: t.chosenColumns ? { columns: t.chosenColumns } : undefined,
      }));
    await store.saveRun(id, {
      status: "running",
      model,
      baseF16: !!state.model?.base_f16,
      texts,
      spec,
      form,
      samplePrompt,
      step: 0,
      total: spec.train.steps,
    });
  } catch (e) {
    showNotice(storageProblem(e, "This run cannot be saved in this browser: a reload will lose it"));
  }
  renderRuns();
  send({ type: "start", spec, samplePrompt });
};
$("pause").onclick = () => send({ type: "pause" });
$("stop").onclick = () => send({ type: "stop" });
$("sample").onclick = () => send({ type: "sample", prompt: $("sample-prompt").value, withAdapter: state.adapter });
$("download").onclick = () => send({ type: "export", format: "peft", dtype: $("f16").checked ? "f16" : "f32" });
$("download-merged").onclick = () => send({ type: "export", format: "merged" });
$("download-recipe").onclick = () => send({ type: "export", format: "recipe" });
$("download-gguf").onclick = () => send({ type: "export", format: "gguf", dtype: $("f16").checked ? "f16" : "f32" });
$("chat-ask").onclick = () => ask();
$("adapter-files").onchange = async (e) => {
  const files = [.../** @type {HTMLInputElement} */ (e.target).files];
  /** @type {HTMLInputElement} */ (e.target).value = "";
  if (!files.length || !state.model) return;
  const payload = await Promise.all(
    files.map(async (f) => ({ name: f.webkitRelativePath || f.name, buffer: await f.arrayBuffer() })),
  );
  send(
    { type: "openAdapter", files: payload },
    payload.map((p) => p.buffer),
  );
};
$("close-adapter").onclick = () => send({ type: "closeAdapter" });

drawChart();
// Isolated first (a reload here, on a static host's first visit), then the worker.
const { isolated } = await isolate();
state.isolated = isolated;
startWorker($("backend-choice").value);
