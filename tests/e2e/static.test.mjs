// The page copied to a static host that sends no COOP/COEP headers (Python's http.server on
// web/): its service worker (web/sw.js) adds them, so after one reload the page is cross-origin
// isolated and the CPU backend runs on threads; and with the network cut after that first
// visit, the page opens again and trains from its own cached code. The default model, which
// only web/serve.py serves, is a message naming its id.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { get } from "node:http";
import { join } from "node:path";
import { launch, root, settings, tinyModelAndText, watchErrors } from "./helpers.mjs";

/** `python3 -m http.server` on web/, on a free port. */
function staticServer() {
  return new Promise((resolve, reject) => {
    const server = spawn("python3", ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", join(root, "web")]);
    server.on("error", reject);
    server.stdout.on("data", (d) => {
      const m = /port (\d+)/.exec(String(d));
      if (m) resolve({ server, url: `http://127.0.0.1:${m[1]}/` });
    });
    setTimeout(() => reject(new Error("http.server did not start")), 15000);
  });
}

const headersOf = (url) => new Promise((resolve, reject) => get(url, (r) => { r.resume(); resolve(r.headers); }).on("error", reject));

async function trainTwoSteps(page) {
  await tinyModelAndText(page);
  await page.check("#presets input[value=quick]");
  await settings(page, { steps: 2, batch_size: 2, seq_len: 16 });
  await page.click("#start");
  await page.waitForSelector("body[data-done='1']", { timeout: 120_000 });
  assert.match(await page.textContent("#train-status"), /Finished after 2 steps/);
}

test("on a static host without COOP/COEP: isolated by the service worker, threads, and offline after one visit", { timeout: 600_000 }, async () => {
  const { server, url } = await staticServer();
  const browser = await launch();
  try {
    // The host sends none of the headers isolation needs.
    const served = await headersOf(url);
    assert.equal(served["cross-origin-embedder-policy"], undefined);
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = watchErrors(page);
    await page.goto(url);
    await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
    assert.equal(await page.evaluate(() => crossOriginIsolated), true, "isolated after the service worker's reload");
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    const status = await page.textContent("#backend-status");
    if (cores > 1 && /Running on the CPU/.test(status)) assert.match(status, /\d+ threads/);
    // No default model file on a static host: the message says to type its id instead.
    await page.click("#load-default");
    await page.waitForSelector("#error:not([hidden])", { timeout: 60_000 });
    assert.match(await page.textContent("#error"), /no default model file .*HuggingFaceTB\/SmolLM2-135M-Instruct/);
    await page.click("#error button");
    await trainTwoSteps(page);

    // The network gone: the page opens from its cached code, isolated still, and trains.
    await context.setOffline(true);
    await page.reload();
    await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
    assert.equal(await page.evaluate(() => crossOriginIsolated), true);
    await trainTwoSteps(page);
    assert.deepEqual(errors.filter((e) => !/ERR_INTERNET_DISCONNECTED|Failed to fetch|status of 404/.test(e)), []);
  } finally {
    await browser.close();
    server.kill();
  }
});
