// The training worker: owns the wasm session, so the page never freezes. The messages in and out
// are protocol.js's; app.js is the other side. No math here: the Rust core does it.

import { toPage } from "./protocol.js";
import * as hub from "./hub.js";

let session = null;
let running = false; // a step loop is active
let samplePrompt = "";
let memoryBytes = () => 0; // the module's memory (WebSession.memoryBytes), once loaded

const post = toPage;

// A trap in the wasm module (a panic, an out-of-memory) leaves it unusable, and when it happens
// inside a promise's continuation that promise never settles. Report it, so that the page can
// start a fresh worker and resume the run from its last checkpoint.
let crashed = false;
let crashReport = null;
function reportCrash(error, gpuLost = false) {
  crashed = true;
  if (crashReport?.sent) return;
  // A lost GPU often makes the next GPU call trap first: wait a moment, so that the page hears
  // the cause (and moves the run to the CPU) rather than the symptom.
  if (!crashReport || gpuLost) crashReport = { gpuLost, message: error?.message ?? String(error) };
  setTimeout(
    () => {
      if (crashReport.sent) return;
      crashReport.sent = true;
      post({ type: "crashed", gpuLost: crashReport.gpuLost, message: crashReport.message });
    },
    gpuLost ? 0 : 300,
  );
}
const isTrap = (e) => e instanceof WebAssembly.RuntimeError || /unreachable|out of memory/i.test(e?.message ?? "");
self.addEventListener("error", (e) => {
  e.preventDefault();
  reportCrash(e.error ?? e.message);
});
self.addEventListener("unhandledrejection", (e) => {
  if (isTrap(e.reason)) {
    e.preventDefault();
    reportCrash(e.reason);
  }
});

// The GPU device wgpu asks for: kept (self.webtuneGpuDevice) so that its loss is noticed. A lost
// device (driver reset, GPU unplugged, destroy()) ends the WebGPU session: the page moves the run
// to the CPU backend. wgpu asks for it inside WebSession.create; requestDevice is wrapped for
// that call only (the wasm module gives no handle to the device it made).
async function withDeviceWatch(create) {
  const proto = /** @type {any} */ (self).GPUAdapter?.prototype;
  const requestDevice = proto?.requestDevice;
  if (!requestDevice) return create();
  proto.requestDevice = async function (descriptor) {
    const device = await requestDevice.call(this, descriptor);
    /** @type {any} */ (self).webtuneGpuDevice = device;
    device.lost.then((info) =>
      reportCrash(
        new Error(`the GPU device was lost (${info.reason}${info.message ? `: ${info.message}` : ""})`),
        true,
      ),
    );
    return device;
  };
  try {
    return await create();
  } finally {
    proto.requestDevice = requestDevice;
  }
}

// Two builds of the module (web/build.sh): pkg has WebGPU and the CPU backend on one thread;
// pkg-threads is the CPU backend with its matmuls on a pool of Web Workers (needs a cross-origin
// isolated page, for SharedArrayBuffer), loaded when the page runs on the CPU with more than one
// core (app.js; ?threads=1 for pkg). Measured on 2 cores: SmolLM2 steps ~10% faster than one
// thread and evaluation ~1.5x (README, "Speed"); crate/wasm/src/warm.rs keeps V8 from halving
// that after two steps. A crash on one of the pool's workers never reaches this worker (it is
// blocked waiting for the pool): the module posts it on the page's channel (reportCrashesTo).
async function hardwareGpu() {
  const gpu = /** @type {any} */ (navigator).gpu;
  if (!gpu) return false;
  try {
    const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    // A software adapter (SwiftShader) is slower than the CPU backend.
    return !!adapter && !(adapter.isFallbackAdapter || adapter.info?.isFallbackAdapter);
  } catch {
    return false;
  }
}

async function loadModule(preference, threadCount) {
  const threads =
    threadCount > 1 &&
    self.crossOriginIsolated &&
    typeof SharedArrayBuffer !== "undefined" &&
    preference !== "webgpu" &&
    (preference === "cpu" || !(await hardwareGpu()));
  if (threads) {
    try {
      const mod = await import("./pkg-threads/webtune.js");
      await mod.default();
      await mod.initThreadPool(threadCount);
      return mod;
    } catch (e) {
      console.warn(`the multi-threaded build did not start (${e?.message ?? e}); using one thread`);
    }
  }
  const mod = await import("./pkg/webtune.js");
  await mod.default();
  return mod;
}
const fail = (context, e) => {
  if (isTrap(e)) reportCrash(e);
  else post({ type: "error", context, message: e?.message ?? String(e) });
};
const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

// The default model, served by web/serve.py; adapters name its Hugging Face id as their base.
const DEFAULT_MODEL = {
  url: "models/default.gguf",
  name: "SmolLM2-135M-Instruct.Q4_1.gguf",
  hubId: "HuggingFaceTB/SmolLM2-135M-Instruct",
};
// What a model's files may take when fetched by id: with their copy in the module and the
// weights they become, more would not fit wasm32's 4 GiB.
const MAX_HUB_BYTES = 1.5 * 2 ** 30;
const CACHE = "webtune-models";

// Downloads with progress, keeping a copy in the browser's cache for the next visit.
async function fetchModel(url, name) {
  let cache = null;
  try {
    cache = await caches.open(CACHE);
  } catch {
    /* no Cache API: fetch every time */
  }
  let response = cache ? await cache.match(url) : undefined;
  const fromCache = !!response;
  if (!response) {
    response = await fetch(url);
    if (!response.ok) throw new Error(`${name}: the server answered ${response.status} ${response.statusText}`);
    if (cache) {
      try {
        await cache.put(url, response.clone());
      } catch {
        /* quota: keep going */
      }
    }
  }
  const total = Number(response.headers.get("content-length")) || 0;
  return hub.readBody(response, (loaded) => post({ type: "modelProgress", loaded, total, fromCache }));
}

// A GGUF file's first bytes hold its header: what the model is, before it is loaded.
const GGUF_HEAD_BYTES = 32 << 20;

// Whether the model, loaded with the weights chosen, fits where this backend keeps it (the CPU
// backend: the module's memory, which wasm32 caps at 4 GiB), with its lightest run ("Save
// memory", a batch of 1: what a run can still choose once it is loaded; the plan checks the run
// asked for). One that would not is refused, with what would fit, before its bytes enter the
// module: running out of wasm memory mid-load kills the module.
function checkMemory(/** @type {{ name: string, bytes: Uint8Array }[]} */ files, baseF16) {
  const d = defaults.spec;
  const spec = { ...d, train: { ...d.train, batch_size: 1 }, exec: { ...d.exec, base_f16: baseF16, recompute: true } };
  const total = files.reduce((sum, f) => sum + f.bytes.length, 0);
  const gguf = files.find((f) => f.name.toLowerCase().endsWith(".gguf"));
  const config = files.find((f) => f.name.split("/").pop() === "config.json");
  const head = gguf ? gguf.bytes.subarray(0, GGUF_HEAD_BYTES) : config?.bytes;
  if (!head) return; // the loader names what is missing
  const m = session.modelMemory(gguf ? gguf.name : config.name, head, total, spec);
  if (!m.fits) throw new Error(`${gguf ? gguf.name : "the model"}: loading and training it ${m.advice}`);
}

async function loadModel(msg) {
  post({ type: "modelProgress", loaded: 0, total: 0 });
  let info;
  // A model from the hub: the commit its revision named, for a saved run to load the same again.
  let commit = null;
  if (msg.source === "files") {
    const gguf = msg.files.find((f) => f.name.toLowerCase().endsWith(".gguf"));
    checkMemory(
      msg.files.map((f) => ({ name: f.name, bytes: new Uint8Array(f.buffer) })),
      !!msg.baseF16,
    );
    if (gguf) {
      info = session.loadGguf(gguf.name, new Uint8Array(gguf.buffer), !!msg.baseF16);
    } else {
      const names = msg.files.map((f) => f.name);
      const buffers = msg.files.map((f) => new Uint8Array(f.buffer));
      info = session.loadHfFiles(msg.modelName || "model", names, buffers, !!msg.baseF16);
    }
  } else if (msg.source === "hub") {
    const got = await hub.fetchModel(
      { hub: msg.hub || hub.HUB, id: msg.id, file: msg.file ?? null, revision: msg.revision || "main" },
      {
        cacheName: CACHE,
        maxBytes: MAX_HUB_BYTES,
        onProgress: ({ file, loaded, total, fromCache }) =>
          post({ type: "modelProgress", loaded, total, fromCache, file }),
      },
    );
    commit = got.commit;
    post({ type: "modelProgress", loaded: 1, total: 1, parsing: true });
    checkMemory(got.gguf ? [got.gguf] : got.files, !!msg.baseF16);
    if (got.gguf) {
      info = session.loadGguf(got.gguf.name, got.gguf.bytes, !!msg.baseF16, got.baseId ?? undefined);
    } else {
      const names = got.files.map((f) => f.name);
      info = session.loadHfFiles(
        msg.id,
        names,
        got.files.map((f) => f.bytes),
        !!msg.baseF16,
        got.baseId ?? undefined,
      );
    }
  } else {
    const url = msg.source === "url" ? msg.url : DEFAULT_MODEL.url;
    const name =
      msg.source === "url"
        ? decodeURIComponent(new URL(url, self.location.href).pathname.split("/").pop() || "model.gguf")
        : DEFAULT_MODEL.name;
    const bytes = await fetchModel(url, name).catch((e) => {
      // A static host has no copy of the default model (web/serve.py serves it from its cache).
      if (msg.source === "default" && / 404 /.test(e.message))
        throw new Error(
          `this server has no default model file (${DEFAULT_MODEL.url}): type its id, ` +
            `${DEFAULT_MODEL.hubId}, in the model id box to fetch it from the Hugging Face hub, or open a model file`,
        );
      throw e;
    });
    post({ type: "modelProgress", loaded: bytes.length, total: bytes.length, parsing: true });
    checkMemory([{ name, bytes }], !!msg.baseF16);
    info = session.loadGguf(name, bytes, !!msg.baseF16, msg.source === "url" ? undefined : DEFAULT_MODEL.hubId);
  }
  post({ type: "model", info, commit });
}

// Checkpoints go to the page, which keeps them in the browser's storage (store.js).
// The Rust core's defaults (WebSession.defaults()): the sample's length.
let defaults = null;
// The run's latest progress (what a checkpoint is labelled with).
let lastProgress = null;
async function saveCheckpoint() {
  const bytes = await session.checkpoint();
  post({ type: "checkpoint", bytes, step: lastProgress?.step ?? 0, total: lastProgress?.total_steps ?? 0 }, [
    bytes.buffer,
  ]);
}

// A run that ended: its adapter (a PEFT zip) and its last state, for the page to keep with the
// run until the person deletes it (a reload or a closed tab loses nothing).
async function keepResult() {
  try {
    const zip = session.hasAdapter() ? (await session.exportAdapter("f32")).zip : null;
    const checkpoint = await session.checkpoint();
    const transfer = [checkpoint.buffer, ...(zip ? [zip.buffer] : [])];
    post(
      { type: "kept", zip, checkpoint, step: lastProgress?.step ?? 0, total: lastProgress?.total_steps ?? 0 },
      transfer,
    );
  } catch (e) {
    fail("keeping the run", e);
  }
}

// The training loop is the Rust core's (session.step() = Trainer::next): each call takes a step
// (or, first, evaluates the base model: step 0), or applies the pause / stop asked for, and says
// where the run stands and when a checkpoint is due. This only reports, stores checkpoints, and
// lets messages in between calls.
async function trainLoop() {
  if (running) return;
  running = true;
  try {
    for (;;) {
      const p = await session.step();
      const stepped = p.status === "running" || p.status === "finished";
      if (stepped) {
        lastProgress = p;
        post({ type: "progress", progress: { ...p, memory_mb: memoryBytes() / 2 ** 20 } });
        // The base model's sample waits for the first step, so that training starts at once.
        if (p.step === 1) await sample(samplePrompt, false);
      }
      if (p.checkpoint_due) await saveCheckpoint();
      if (p.status === "paused") {
        post({ type: "paused" });
        return;
      }
      if (p.status !== "running") {
        post({ type: "done", stopped: p.status === "stopped", adapter: session.hasAdapter() });
        await keepResult();
        await sample(samplePrompt, true);
        return;
      }
      await nextTask(); // let pause/stop messages in
    }
  } catch (e) {
    // A lost GPU fails the step with an ordinary error just before (or after) the device reports
    // its loss: give the loss a moment, so that the page resumes the run instead of ending it.
    await new Promise((resolve) => setTimeout(resolve, 500));
    if (crashed) return;
    fail("training", e);
    // A non-finite step keeps the adapter from before it (the Rust core restores it).
    post({ type: "done", failed: true, adapter: session.hasAdapter() });
    if (session.hasAdapter()) await keepResult();
  } finally {
    running = false;
  }
}

async function sample(prompt, adapted) {
  if (!prompt) return;
  try {
    const text = await session.generate(prompt, { adapted, max_new_tokens: defaults?.sample_tokens ?? 40 });
    post({ type: "sample", adapted, prompt, text });
  } catch (e) {
    fail("sampling", e);
  }
}

// A chat turn: the prompt in the model's chat format, the answer streamed as it grows.
async function chat({ id, prompt, adapted, sampling }) {
  try {
    const text = await session.generate(prompt, { ...sampling, chat: true, adapted }, (soFar) => {
      post({ type: "chatText", id, adapted, text: soFar, done: false });
      return true;
    });
    post({ type: "chatText", id, adapted, text, done: true, memoryMb: memoryBytes() / 2 ** 20 });
  } catch (e) {
    fail("chat", e);
    post({ type: "chatText", id, adapted, text: "", done: true });
  }
}

// Messages run one at a time, in order (the session serves one call at a time); pause and stop
// are passed to the session at once, which applies them before its next step.
let queue = Promise.resolve();
const enqueue = (msg) => {
  queue = queue.then(() => handle(msg));
};
self.onmessage = ({ data: msg }) => {
  if (msg.type === "pause" || msg.type === "stop") return handle(msg);
  enqueue(msg);
};

// The plans of the page's presets with its settings (adapter size, duration here); a preset
// this model or data cannot run has none.
function presetPlans(presets = []) {
  return presets.map(({ name, spec }) => {
    try {
      return { name, plan: session.plan(spec) };
    } catch {
      return { name, plan: null };
    }
  });
}

// Whether this model's training speed was measured (for the plan's duration estimate).
let measured = false;
// The measurement (a timed training step; on a GPU after the steps that compile its kernels:
// `train::speed_probe`) waits until the settings have rested a moment, and a
// Start before then skips it: a run measures its own speed, and its first step is not kept
// waiting behind a throwaway one.
const MEASURE_AFTER_MS = 1500;
let measureTimer = null;
function cancelMeasure() {
  clearTimeout(measureTimer);
  measureTimer = null;
}

async function handle(msg) {
  try {
    switch (msg.type) {
      case "init": {
        const mod = await loadModule(msg.backend || "auto", msg.threads || 1);
        const { WebSession } = mod;
        // pkg-threads only: its pool's crashes reach the page on this channel.
        if (msg.crashChannel && "reportCrashesTo" in mod) mod.reportCrashesTo(msg.crashChannel);
        memoryBytes = () => WebSession.memoryBytes();
        session = await withDeviceWatch(() => WebSession.create(msg.backend || "auto"));
        if (msg.memoryLimit) session.setMemoryLimit(msg.memoryLimit);
        defaults = WebSession.defaults();
        post({ type: "ready", backend: session.backend(), limits: WebSession.limits(), defaults });
        break;
      }
      case "loadModel":
        measured = false;
        cancelMeasure();
        await loadModel(msg);
        break;
      case "addText":
        post({ type: "text", info: session.addText(msg.name, new Uint8Array(msg.buffer), msg.options) });
        break;
      case "removeText":
        session.removeText(msg.name);
        post({ type: "textRemoved", name: msg.name });
        break;
      case "plan":
        if (running) break; // the settings of a running run cannot change
        post({ type: "plan", plan: session.plan(msg.spec), presets: presetPlans(msg.presets) });
        if (!measured) {
          cancelMeasure();
          const { spec, presets } = msg;
          measureTimer = setTimeout(() => enqueue({ type: "measure", spec, presets }), MEASURE_AFTER_MS);
        }
        break;
      case "measure":
        // A timed training step, so the plan can say how long a run takes on this machine.
        if (measured || running || measureTimer === null) break;
        measureTimer = null;
        measured = true;
        post({ type: "measuring" });
        await session.measure(msg.spec);
        post({ type: "plan", plan: session.plan(msg.spec), presets: presetPlans(msg.presets) });
        break;
      case "start": {
        cancelMeasure();
        samplePrompt = msg.samplePrompt || "";
        const plan = session.start(msg.spec);
        lastProgress = null;
        post({ type: "started", plan, history: [] });
        // Step 0 saved too: a crash before the first checkpoint still resumes with these settings.
        if ((msg.spec?.train?.checkpoint_every ?? defaults.spec.train.checkpoint_every) > 0) await saveCheckpoint();
        trainLoop();
        break;
      }
      case "restore": {
        // A run saved by an earlier worker (a reload, a crash, another backend).
        cancelMeasure();
        samplePrompt = msg.samplePrompt || "";
        const plan = session.resume(new Uint8Array(msg.bytes));
        // "Save memory" as the page shows it now (a run may switch: same gradients).
        if (msg.saveMemory != null) session.setSaveMemory(msg.saveMemory);
        const history = session.history();
        lastProgress = history.at(-1) ?? null;
        post({ type: "started", plan, history, restored: true });
        trainLoop();
        break;
      }
      case "pause":
        session.pause();
        break;
      case "continue":
        trainLoop();
        break;
      case "stop":
        session.stop();
        if (!running) {
          // Paused (or never started): no loop will report it.
          post({ type: "done", stopped: true, adapter: session.hasAdapter() });
          if (session.hasAdapter()) await keepResult();
          await sample(samplePrompt, true);
        }
        break;
      case "sample":
        await sample(msg.prompt, false);
        if (msg.withAdapter) await sample(msg.prompt, true);
        break;
      case "chat":
        await chat(msg);
        break;
      case "openAdapter": {
        const names = msg.files.map((f) => f.name);
        const buffers = msg.files.map((f) => new Uint8Array(f.buffer));
        post({ type: "adapterOpened", info: session.openAdapter(names, buffers) });
        break;
      }
      case "closeAdapter":
        session.closeAdapter();
        post({ type: "adapterOpened", info: null });
        break;
      case "export": {
        if (msg.format === "merged") {
          const { name, bytes } = await session.exportMerged();
          post({ type: "adapter", merged: bytes, name }, [bytes.buffer]);
        } else if (msg.format === "recipe") {
          const recipe = await session.exportRecipe();
          post({ type: "adapter", recipe }, [recipe.buffer]);
        } else if (msg.format === "gguf") {
          const gguf = await session.exportGgufLora(msg.dtype || "f32");
          post({ type: "adapter", gguf }, [gguf.buffer]);
        } else {
          const a = await session.exportAdapter(msg.dtype || "f32");
          post({ type: "adapter", zip: a.zip, configJson: a.config_json }, [a.zip.buffer]);
        }
        break;
      }
      default:
        fail("worker", new Error(`unknown message ${msg.type}`));
    }
  } catch (e) {
    fail(msg.type, e);
  }
}
