// Registers the page's service worker (sw.js: the page's code kept for offline use, and the
// COOP/COEP headers a static host does not send), and reloads the page once under it where the
// page is not cross-origin isolated yet, so that the CPU backend can run on threads. Where
// isolation cannot be had (no service workers, an insecure origin, a reload that did not help)
// the page runs the one-thread build and says why (app.js).

const RELOADED = "webtune-isolation-reload";

/**
 * Resolves once the page is as isolated as it can be; never resolves when it reloads.
 * @returns {Promise<{ isolated: boolean, offline: boolean }>}
 */
export async function isolate() {
  const sw = navigator.serviceWorker;
  if (!sw || !isSecureContext) return { isolated: crossOriginIsolated, offline: false };
  try {
    await sw.register("sw.js");
    await sw.ready;
  } catch (e) {
    console.warn(`no service worker (${e?.message ?? e}): no offline copy, no isolation added`);
    return { isolated: crossOriginIsolated, offline: false };
  }
  if (crossOriginIsolated) {
    sessionStorage.removeItem(RELOADED);
  } else if (!sessionStorage.getItem(RELOADED)) {
    sessionStorage.setItem(RELOADED, "1");
    if (!sw.controller)
      await new Promise((resolve) => sw.addEventListener("controllerchange", resolve, { once: true }));
    location.reload();
    return new Promise(() => {});
  }
  return { isolated: crossOriginIsolated, offline: true };
}
