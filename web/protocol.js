// The messages between the page (app.js) and its training worker (worker.js): one union each
// way, every message by one name with one meaning. The payloads the Rust core makes (ModelInfo,
// TextInfo, Plan, Progress, the run spec) are described in webtune.d.ts (wasm-bindgen's, with
// crate/wasm's typed additions); here they are `object`s.

/**
 * A run spec: `{ data, lora, train, optim, exec }` (crate/core/src/spec.rs), every key optional.
 * @typedef {{ data?: object, lora?: object, train?: object, optim?: object, exec?: object }} RunSpec
 */

/**
 * What the page asks of the worker.
 * @typedef {(
 *   { type: "init", backend: string, threads: number, crashChannel: string, memoryLimit: number | null }
 * | { type: "loadModel", source: "default" | "url" | "files" | "hub", url?: string, modelName?: string,
 *     files?: { name: string, buffer: ArrayBuffer }[], hub?: string, id?: string, file?: string | null,
 *     revision?: string, baseF16: boolean }
 * | { type: "addText", name: string, buffer: ArrayBuffer, options?: object }
 * | { type: "removeText", name: string }
 * | { type: "plan", spec: RunSpec, presets?: { name: string, spec: RunSpec }[] }
 * | { type: "measure", spec: RunSpec, presets?: { name: string, spec: RunSpec }[] }
 * | { type: "start", spec: RunSpec, samplePrompt: string }
 * | { type: "restore", bytes: Uint8Array, samplePrompt: string, saveMemory: boolean }
 * | { type: "pause" }
 * | { type: "continue" }
 * | { type: "stop" }
 * | { type: "sample", prompt: string, withAdapter: boolean }
 * | { type: "chat", id: number, prompt: string, adapted: boolean, sampling: object }
 * | { type: "openAdapter", files: { name: string, buffer: ArrayBuffer }[] }
 * | { type: "closeAdapter" }
 * | { type: "export", format: "peft" | "gguf" | "merged" | "recipe", dtype?: "f32" | "f16" }
 * )} ToWorker
 */

/**
 * What the worker tells the page.
 * @typedef {(
 *   { type: "ready", backend: object, limits: object, defaults: object }
 * | { type: "modelProgress", loaded: number, total: number, fromCache?: boolean, parsing?: boolean,
 *     file?: string }
 * | { type: "model", info: object, commit: string | null }
 * | { type: "text", info: object }
 * | { type: "textRemoved", name: string }
 * | { type: "plan", plan: object, presets: { name: string, plan: object | null }[] }
 * | { type: "measuring" }
 * | { type: "started", plan: object, history: object[], restored?: boolean }
 * | { type: "progress", progress: object }
 * | { type: "checkpoint", bytes: Uint8Array, step: number, total: number }
 * | { type: "paused" }
 * | { type: "done", stopped?: boolean, failed?: boolean, adapter: boolean }
 * | { type: "kept", zip: Uint8Array | null, checkpoint: Uint8Array | null, step: number, total: number }
 * | { type: "sample", adapted: boolean, prompt: string, text: string }
 * | { type: "chatText", id: number, adapted: boolean, text: string, done: boolean, memoryMb?: number }
 * | { type: "adapterOpened", info: object }
 * | { type: "adapter", zip?: Uint8Array, gguf?: Uint8Array, merged?: Uint8Array, recipe?: Uint8Array,
 *     name?: string, configJson?: string }
 * | { type: "error", context: string, message: string }
 * | { type: "crashed", gpuLost: boolean, message: string }
 * )} FromWorker
 */

/**
 * Sends `msg` to the worker.
 * @param {Worker} worker
 * @param {ToWorker} msg
 * @param {Transferable[]} [transfer]
 */
export function toWorker(worker, msg, transfer = []) {
  worker.postMessage(msg, transfer);
}

/**
 * Sends `msg` to the page (from the worker).
 * @param {FromWorker} msg
 * @param {Transferable[]} [transfer]
 */
export function toPage(msg, transfer = []) {
  // In a worker, `self` is its global scope (DedicatedWorkerGlobalScope), not a Window.
  /** @type {any} */ (self).postMessage(msg, transfer);
}
