// The page's service worker. Two jobs, both for a page copied to any static host:
// - Where the server sends no COOP/COEP headers (GitHub Pages and most static hosts), it adds
//   them to the page's own responses, so that the page is cross-origin isolated and the CPU
//   backend runs on a thread per core (isolation.js reloads the page once under it).
// - It keeps the page's code (HTML, JS, CSS, wasm) in the Cache API and serves it from there
//   when the network is gone: after one visit the page opens and trains offline. The network
//   comes first whenever there is one, so a new build is never hidden behind an old copy.
// Models are not its business: the worker keeps those (worker.js, hub.js).

const CACHE = "webtune-page";
const CODE = /(\.(html|js|css|wasm)|\/)$/;

self.addEventListener("install", () => /** @type {any} */ (self).skipWaiting());
self.addEventListener("activate", (/** @type {any} */ e) => e.waitUntil(/** @type {any} */ (self).clients.claim()));

self.addEventListener("fetch", (/** @type {any} */ e) => {
  const request = /** @type {Request} */ (e.request);
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== location.origin || !CODE.test(url.pathname)) return;
  e.respondWith(serve(request, url));
});

/** @param {Request} request @param {URL} url */
async function serve(request, url) {
  // One copy a file, whatever its query (?backend=cpu...).
  const key = url.origin + url.pathname;
  const cache = await caches.open(CACHE);
  let response;
  try {
    response = await fetch(request);
  } catch (offline) {
    const kept = await cache.match(key);
    if (!kept) throw offline;
    return isolated(kept);
  }
  if (response.status === 200 && response.type === "basic") {
    const kept = await cache.match(key);
    // The wasm is tens of MB: written again only when the server's copy changed.
    const same = (/** @type {Response} */ a, /** @type {Response} */ b) =>
      ["etag", "last-modified", "content-length"].every((h) => a.headers.get(h) === b.headers.get(h));
    if (!kept || !same(kept, response)) {
      try {
        await cache.put(key, response.clone());
      } catch {
        // A full disk or a response the cache refuses: served all the same, not kept.
      }
    }
  }
  return isolated(response);
}

/** The response with the headers cross-origin isolation needs, where it lacks them. */
function isolated(/** @type {Response} */ response) {
  if (response.status === 0 || response.headers.get("cross-origin-embedder-policy")) return response;
  const headers = new Headers(response.headers);
  headers.set("Cross-Origin-Opener-Policy", "same-origin");
  headers.set("Cross-Origin-Embedder-Policy", "require-corp");
  headers.set("Cross-Origin-Resource-Policy", "same-origin");
  // The body here is already decoded.
  headers.delete("content-encoding");
  headers.delete("content-length");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}
