// A model by its Hugging Face id, for the worker: the files a model is read from, fetched from
// the hub's `resolve` URLs at the revision's commit, each checked against the size and hash the
// hub lists for it, and kept in the browser's cache. These are the only requests the page makes
// to another origin, and only when a person asks for a model by id (the page's CSP allows the
// hub and the hosts it redirects downloads to, web/serve.py).

export const HUB = "https://huggingface.co";

// The files of a Hugging Face model folder that webtune reads (crate/core/src/base_model.rs);
// any others in the repository (PyTorch weights, ONNX, GGUF copies) are not downloaded.
const TEXT_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"];
const INDEX = "model.safetensors.index.json";

/**
 * What a person typed, if it names a model on the hub: `org/name`, optionally a GGUF file in it
 * (`org/name/file.gguf`) and a revision (`@branch`, `@tag` or `@commit`).
 * @param {string} text
 * @returns {{ id: string, file: string | null, revision: string } | null}
 */
export function parseModelId(text) {
  const m = /^([\w.-]+\/[\w.-]+)((?:\/[\w.-]+)*\.gguf)?(?:@([\w./-]+))?$/i.exec(text.trim());
  if (!m || m[1].split("/").some((p) => p.startsWith("."))) return null;
  return { id: m[1], file: m[2] ? m[2].slice(1) : null, revision: m[3] || "main" };
}

/** An error a person can act on: what was asked, and what went wrong. */
class HubError extends Error {}

async function getJson(url, what) {
  let response;
  try {
    response = await fetch(url, { credentials: "omit", redirect: "follow" });
  } catch (e) {
    throw new HubError(`${what}: the hub could not be reached (${e.message})`);
  }
  if (response.status === 401 || response.status === 403 || response.status === 404)
    throw new HubError(
      `${what}: the hub has no such model, or it is private or gated (answered ${response.status}; ` +
        "the page sends no login: download its files and open them instead)",
    );
  if (!response.ok) throw new HubError(`${what}: the hub answered ${response.status} ${response.statusText}`);
  return response.json();
}

async function digestHex(algorithm, bytes) {
  const hash = new Uint8Array(await crypto.subtle.digest(algorithm, bytes));
  return [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Whether `bytes` are the file the hub lists: its size, and its hash (SHA-256 for files in LFS,
 * else git's blob id: SHA-1 of `blob <size>\0` and the bytes).
 */
async function check(sibling, bytes) {
  const size = sibling.lfs?.size ?? sibling.size;
  if (size != null && bytes.length !== size)
    return `got ${bytes.length.toLocaleString()} bytes, the hub lists ${size.toLocaleString()}`;
  if (sibling.lfs?.sha256) {
    if ((await digestHex("SHA-256", bytes)) !== sibling.lfs.sha256) return "its SHA-256 is not the one the hub lists";
  } else if (sibling.blobId) {
    const header = new TextEncoder().encode(`blob ${bytes.length}\0`);
    const blob = new Uint8Array(header.length + bytes.length);
    blob.set(header);
    blob.set(bytes, header.length);
    if ((await digestHex("SHA-1", blob)) !== sibling.blobId) return "its git hash is not the one the hub lists";
  }
  return null;
}

/**
 * Downloads `url` with progress (`onBytes(loaded)`), from the browser's cache when it holds it.
 * @returns {Promise<{ bytes: Uint8Array, fromCache: boolean }>}
 */
async function download(url, what, cache, onBytes) {
  let response = cache ? await cache.match(url) : undefined;
  const fromCache = !!response;
  if (!response) {
    try {
      response = await fetch(url, { credentials: "omit", redirect: "follow" });
    } catch (e) {
      throw new HubError(`${what}: the download failed (${e.message})`);
    }
    if (!response.ok) throw new HubError(`${what}: the hub answered ${response.status} ${response.statusText}`);
  }
  const bytes = await readBody(response, (loaded) => onBytes(loaded, fromCache));
  return { bytes, fromCache };
}

/**
 * A response's body as one array, `onBytes(loaded)` called as each piece arrives.
 * @param {Response} response
 * @param {(loaded: number) => void} onBytes
 * @returns {Promise<Uint8Array>}
 */
export async function readBody(response, onBytes) {
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    onBytes(loaded);
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}

/**
 * The model `request` names, downloaded and checked: a GGUF file's bytes, or a Hugging Face
 * folder's files. `baseId` is the model adapters name as their base (the repository's own id, or
 * for a GGUF the `base_model` its model card names).
 * @param {{ hub: string, id: string, file: string | null, revision: string }} request
 * @param {{ cacheName: string, maxBytes: number, onProgress: (p: object) => void }} options
 * @returns {Promise<{ gguf?: { name: string, bytes: Uint8Array }, files?: { name: string, bytes: Uint8Array }[], baseId: string | null, commit: string }>}
 */
export async function fetchModel(request, { cacheName, maxBytes, onProgress }) {
  const hub = request.hub.replace(/\/+$/, "");
  const { id, revision } = request;
  const info = await getJson(`${hub}/api/models/${id}/revision/${encodeURIComponent(revision)}?blobs=true`, id);
  const commit = typeof info.sha === "string" && /^[0-9a-f]{40}$/.test(info.sha) ? info.sha : null;
  if (!commit || !Array.isArray(info.siblings))
    throw new HubError(`${id}: the hub's answer does not list the revision's files`);
  const siblings = new Map(info.siblings.map((s) => [s.rfilename, s]));
  const resolve = (file) => `${hub}/${id}/resolve/${commit}/${file.split("/").map(encodeURIComponent).join("/")}`;
  let cache = null;
  try {
    cache = await caches.open(cacheName);
  } catch {
    /* no Cache API: download every time */
  }

  // Which files: the GGUF asked for, or a folder's config, tokenizer and weights.
  let wanted;
  let gguf = null;
  if (request.file) {
    if (!siblings.has(request.file)) throw new HubError(`${id}: the repository has no file ${request.file}`);
    wanted = [request.file];
    gguf = request.file;
  } else {
    if (!siblings.has("config.json")) {
      const ggufs = [...siblings.keys()].filter((f) => f.toLowerCase().endsWith(".gguf"));
      throw new HubError(
        ggufs.length
          ? `${id} holds GGUF files: name one, e.g. ${id}/${ggufs.find((f) => /q4_k_m/i.test(f)) ?? ggufs[0]}`
          : `${id} has no config.json: not a model webtune reads`,
      );
    }
    wanted = TEXT_FILES.filter((f) => siblings.has(f));
    if (siblings.has(INDEX)) {
      wanted.push(INDEX);
    } else if (siblings.has("model.safetensors")) {
      wanted.push("model.safetensors");
    } else {
      throw new HubError(`${id} has no safetensors weights (model.safetensors or ${INDEX}), which webtune reads`);
    }
  }

  const got = new Map();
  let done = 0;
  const total = () => wanted.reduce((n, f) => n + (siblings.get(f)?.lfs?.size ?? siblings.get(f)?.size ?? 0), 0);
  const fetchChecked = async (file) => {
    const sibling = siblings.get(file);
    const what = `${id}: ${file}`;
    const url = resolve(file);
    for (let attempt = 0; ; attempt++) {
      const { bytes, fromCache } = await download(url, what, attempt === 0 ? cache : null, (loaded, cached) =>
        onProgress({ file, loaded: done + loaded, total: total(), fromCache: cached }),
      );
      const problem = await check(sibling, bytes);
      if (!problem) {
        if (cache && !fromCache) {
          try {
            await cache.put(url, new Response(/** @type {ArrayBuffer} */ (bytes.buffer)));
          } catch {
            /* quota: keep going without a cached copy */
          }
        }
        done += bytes.length;
        got.set(file, bytes);
        return;
      }
      // A damaged cached copy is downloaded again; a download that does not match is an error.
      if (fromCache) await cache.delete(url);
      else throw new HubError(`${what}: ${problem}`);
    }
  };

  // The shards an index names (its own download first, as it lists them).
  if (wanted.includes(INDEX)) {
    await fetchChecked(INDEX);
    let index;
    try {
      index = JSON.parse(new TextDecoder().decode(got.get(INDEX)));
    } catch {
      throw new HubError(`${id}: ${INDEX} is not JSON`);
    }
    for (const shard of new Set(Object.values(index?.weight_map ?? {}))) {
      if (typeof shard !== "string" || !siblings.has(shard))
        throw new HubError(`${id}: ${INDEX} names ${shard}, which the repository does not hold`);
      wanted.push(shard);
    }
  }
  if (total() > maxBytes)
    throw new HubError(
      `${id}: its files take ${(total() / 2 ** 30).toFixed(2)} GiB, more than the ${(maxBytes / 2 ** 30).toFixed(0)} GiB ` +
        "a browser tab can hold with its training (WebAssembly's 4 GiB): a smaller model, or a GGUF of it, fits",
    );
  for (const file of wanted) if (!got.has(file)) await fetchChecked(file);

  if (gguf) {
    const base = info.cardData?.base_model;
    const baseId = (Array.isArray(base) ? base[0] : base) ?? null;
    return {
      gguf: { name: gguf.split("/").pop(), bytes: got.get(gguf) },
      baseId: parseModelId(String(baseId ?? "")) ? baseId : null,
      commit,
    };
  }
  return { files: wanted.map((name) => ({ name, bytes: got.get(name) })), baseId: id, commit };
}
