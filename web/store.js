// The run's durable state, in this browser's IndexedDB (it never leaves the machine): what the
// run needs to start again after a reload, a crash or a backend switch. Two records:
//   "setup":      { model: { source: "default" | "url" | "files", url?, name, files?: File[] },
//                   texts: [{ name, buffer }], settings, form, samplePrompt, savedAt }
//   "checkpoint": { bytes: Uint8Array, step, total, savedAt }
// Model files opened from disk are kept as File objects (the browser stores their bytes).

const DB = "webtune";
const STORE = "run";

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function transact(mode, fn) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const result = fn(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(result.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("the browser's storage refused the write"));
    });
  } finally {
    db.close();
  }
}

export const saveSetup = (setup) => transact("readwrite", (s) => s.put({ ...setup, savedAt: Date.now() }, "setup"));
export const saveCheckpoint = (checkpoint) => transact("readwrite", (s) => s.put({ ...checkpoint, savedAt: Date.now() }, "checkpoint"));

/** The saved run: { setup, checkpoint } when both are there, else null. */
export async function loadRun() {
  try {
    const setup = await transact("readonly", (s) => s.get("setup"));
    const checkpoint = await transact("readonly", (s) => s.get("checkpoint"));
    return setup && checkpoint ? { setup, checkpoint } : null;
  } catch {
    return null; // no IndexedDB (private mode in some browsers): nothing saved
  }
}

export async function clearRun() {
  try { await transact("readwrite", (s) => s.clear()); } catch { /* nothing to clear */ }
}
