// Runs, kept in this browser's IndexedDB (nothing leaves the machine). Every run is a record of its
// own, keyed by its id, from Start until the person deletes it:
//   runs:        { id, status, createdAt, updatedAt, model: { source, name, url?, modelKey? },
//                  baseF16, texts: [{ name, buffer, options? }], spec, form, samplePrompt,
//                  step, total, valLoss?, firstValLoss?, adapterBytes? }
//                status: "running" | "paused" | "finished" | "stopped" | "failed"
//   checkpoints: id -> { bytes, step, total, savedAt }   (the run's last saved state)
//   adapters:    id -> { zip, savedAt }                   (a finished run's PEFT adapter)
//   models:      key -> { files: File[] }                 (model files opened from disk, shared
//                                                          by the runs on them)
// A tab holds a Web Lock on each run it trains (`webtune-run-<id>`): a run whose lock no tab
// holds and that did not end was interrupted (a reload, a crash, a closed tab); a run locked by
// another tab is that tab's. Writes that fail (a full disk) are errors the page reports.

const DB = "webtune";
const VERSION = 2;
const STORES = ["runs", "checkpoints", "adapters", "models"];

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, VERSION);
    req.onupgradeneeded = (e) => {
      const db = req.result;
      for (const name of STORES) if (!db.objectStoreNames.contains(name)) db.createObjectStore(name);
      // Version 1 kept one run in "run" ("setup" + "checkpoint"): it becomes a run of its own.
      if (e.oldVersion === 1 && db.objectStoreNames.contains("run")) {
        const tx = req.transaction;
        const old = tx.objectStore("run");
        const setup = old.get("setup");
        const checkpoint = old.get("checkpoint");
        checkpoint.onsuccess = () => {
          if (setup.result && checkpoint.result) {
            const id = newId();
            const { bytes, step, total, savedAt } = checkpoint.result;
            tx.objectStore("runs").put(
              {
                ...setup.result,
                id,
                status: "running",
                createdAt: setup.result.savedAt,
                updatedAt: savedAt,
                step,
                total,
              },
              id,
            );
            tx.objectStore("checkpoints").put({ bytes, step, total, savedAt }, id);
          }
          db.deleteObjectStore("run");
        };
      }
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Runs `fn(stores)` in one transaction over `names`; resolves to what fn's request gives. */
async function transact(names, mode, fn) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(names, mode);
      const stores = Object.fromEntries(names.map((n) => [n, tx.objectStore(n)]));
      const req = fn(stores);
      tx.oncomplete = () => resolve(req?.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("the browser's storage refused the write"));
    });
  } finally {
    db.close();
  }
}

export function newId() {
  return self.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

/** Every run, newest first. */
export async function runs() {
  try {
    const all = await transact(["runs"], "readonly", (s) => s.runs.getAll());
    return (all ?? []).sort((a, b) => b.createdAt - a.createdAt);
  } catch {
    return []; // no IndexedDB (some private modes): nothing saved
  }
}

export const run = (id) => transact(["runs"], "readonly", (s) => s.runs.get(id));
export const checkpoint = (id) => transact(["checkpoints"], "readonly", (s) => s.checkpoints.get(id));
export const adapter = (id) => transact(["adapters"], "readonly", (s) => s.adapters.get(id));
export const model = (key) => transact(["models"], "readonly", (s) => s.models.get(key));

/** Creates or updates a run's record (the fields given replace the stored ones): read and
 * written in one transaction, so that two updates never lose each other's fields. */
export async function saveRun(id, fields) {
  const now = Date.now();
  await transact(["runs"], "readwrite", (s) => {
    const r = s.runs.get(id);
    r.onsuccess = () => s.runs.put({ createdAt: now, ...r.result, ...fields, id, updatedAt: now }, id);
    return r;
  });
  changed();
}

export async function saveCheckpoint(id, { bytes, step, total }) {
  await within("the run's progress", bytes.byteLength, () =>
    transact(["checkpoints", "runs"], "readwrite", (s) => {
      s.checkpoints.put({ bytes, step, total, savedAt: Date.now() }, id);
      const r = s.runs.get(id);
      r.onsuccess = () => {
        // A checkpoint of step 0 is saved before any report says how many steps the run has.
        if (r.result) s.runs.put({ ...r.result, step, ...(total ? { total } : {}), updatedAt: Date.now() }, id);
      };
      return r;
    }),
  );
}

export async function saveAdapter(id, zip) {
  await within("the finished run's adapter", zip.byteLength, () =>
    transact(["adapters"], "readwrite", (s) => s.adapters.put({ zip, savedAt: Date.now() }, id)),
  );
}

/** Keeps model files opened from disk once, however many runs use them; returns their key. */
export async function saveModelFiles(files) {
  const key = files.map((f) => `${f.name}:${f.size}:${f.lastModified}`).join("|");
  if (!(await model(key))) {
    const bytes = files.reduce((n, f) => n + f.size, 0);
    await within("a copy of the model", bytes, () =>
      transact(["models"], "readwrite", (s) => s.models.put({ files }, key)),
    );
  }
  return key;
}

/** Deletes a run with its checkpoint and adapter, and a model copy no other run uses. */
export async function deleteRun(id) {
  const gone = await run(id);
  await transact(["runs", "checkpoints", "adapters"], "readwrite", (s) => {
    s.checkpoints.delete(id);
    s.adapters.delete(id);
    return s.runs.delete(id);
  });
  const key = gone?.model?.modelKey;
  if (key && !(await runs()).some((r) => r.model?.modelKey === key)) {
    await transact(["models"], "readwrite", (s) => s.models.delete(key));
  }
  changed();
}

// ---- locks: which tab trains which run ----------------------------------------------------------

const held = new Map();

/** Holds the run's lock for as long as this tab lives (or until `release`). */
export function hold(id) {
  if (!navigator.locks || held.has(id)) return;
  let release;
  const done = new Promise((r) => {
    release = r;
  });
  held.set(id, release);
  navigator.locks.request(`webtune-run-${id}`, () => done);
}

export function release(id) {
  held.get(id)?.();
  held.delete(id);
}

/** Whether another tab holds the run's lock (it is training it now). */
export async function heldElsewhere(id) {
  if (!navigator.locks || held.has(id)) return false;
  const { held: locks } = await navigator.locks.query();
  return locks.some((l) => l.name === `webtune-run-${id}`);
}

// ---- room: persistence, quota, and telling other tabs ----------------------------------------

/** Asks the browser to keep this page's storage (not evict it under pressure): true if granted. */
export async function persist() {
  try {
    return (await navigator.storage?.persisted?.()) || (await navigator.storage?.persist?.()) || false;
  } catch {
    return false;
  }
}

/** A storage error naming what to free: thrown before a write that would not fit, or when the
 * browser refused one for its quota. */
export class StorageFull extends Error {
  constructor(what, needed, free = null) {
    const sizes = free == null ? `${mb(needed)}` : `${mb(needed)} needed, ${mb(free)} free`;
    super(
      `Not enough storage in this browser for ${what} (${sizes}): ` +
        "delete past runs you no longer need (Your runs, below), then try again.",
    );
    this.name = "StorageFull";
  }
}

/** `write()`, its quota error (the browser's own: estimates can be wrong) a StorageFull. */
async function within(what, bytes, write) {
  await ensureRoom(bytes, what);
  try {
    return await write();
  } catch (e) {
    throw e?.name === "QuotaExceededError" ? new StorageFull(what, bytes) : e;
  }
}

async function ensureRoom(bytes, what) {
  const estimate = await navigator.storage?.estimate?.().catch(() => null);
  if (!estimate?.quota) return;
  const free = estimate.quota - (estimate.usage ?? 0);
  if (bytes > free) throw new StorageFull(what, bytes, free);
}

/** Storage used and allowed: `{ usage, quota }` in bytes, when the browser says. */
export async function usage() {
  return (await navigator.storage?.estimate?.().catch(() => null)) ?? {};
}

function mb(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.max(0, Math.round(n / 1e3))} kB`;
}

const channel = typeof BroadcastChannel === "undefined" ? null : new BroadcastChannel("webtune-runs");

function changed() {
  channel?.postMessage({ type: "runs-changed" });
}

/** Calls `fn` when another tab changes the runs. */
export function onChange(fn) {
  if (channel)
    channel.onmessage = ({ data }) => {
      if (data?.type === "runs-changed") fn();
    };
}
