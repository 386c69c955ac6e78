// End to end: runs that survive. A reload mid-run resumes from the last checkpoint and ends with
// the adapter an uninterrupted run makes; a destroyed GPU device moves the run to the CPU; a
// crash of the wasm module, on the page's worker or on one of the thread pool's, starts a fresh
// one that continues the run, and so does a module that hangs (the watchdog), but a crash that
// repeats before any progress stops the restarts; a pause during the final
// step still finishes the run; the model and the texts are locked during a run. The server's
// answers: 400 for a malformed request, no folder listings, the page's code compressed.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import zlib from "node:zlib";
import { launch, root, startServer, tinyModelAndText, settings, downloadAdapter, watchErrors, unzip } from "./helpers.mjs";

// Long enough (on the tiny model, wasm CPU) to reload in the middle.
const LONG = { steps: 400, seq_len: 64, batch_size: 8, lr: 0.02, checkpoint_every: 20 };

async function fresh(browser, url) {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  page.on("dialog", (d) => d.accept()); // "leave the page?" while training
  const errors = watchErrors(page);
  await page.goto(url);
  return { context, page, errors };
}

// The page's own worker (worker.js), not one of the thread pool's (whose event loops are busy in
// the pool's wasm loop for good, so evaluate() there never runs).
const sessionWorker = (page) => page.workers().filter((w) => new URL(w.url()).pathname.endsWith("/worker.js")).at(-1);

const step = (page) => page.evaluate(() => window.webtuneState.points.at(-1)?.step ?? 0);

test("a reload mid-run resumes, and the adapter equals an uninterrupted run's", { timeout: 900_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const cpu = `${url}?backend=cpu`;
    // The uninterrupted run.
    const a = await fresh(browser, cpu);
    await tinyModelAndText(a.page);
    await settings(a.page, LONG);
    await a.page.click("#start");
    await a.page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    const whole = await downloadAdapter(a.page);
    assert.deepEqual(a.errors, []);
    await a.context.close();

    // The same run, reloaded in the middle.
    const b = await fresh(browser, cpu);
    await tinyModelAndText(b.page);
    // Limits are shown next to the settings (and enforced in Rust).
    assert.match(await b.page.textContent("#limits"), /steps ≤ 1,000,000/);
    await settings(b.page, LONG);
    await b.page.click("#start");
    await b.page.waitForFunction(() => Number(document.body.dataset.checkpoint) >= 60, null, { timeout: 300_000 });
    // During the run the model, the texts and the settings are locked.
    for (const sel of ["#model-files", "#text-files", "#load-default", "input[name=steps]", "#text-table button"]) {
      assert.equal(await b.page.$eval(sel, (e) => e.disabled), true, `${sel} is enabled during a run`);
    }
    const before = await step(b.page);
    await b.page.reload();
    await b.page.waitForSelector("#resume-banner:not([hidden])", { timeout: 120_000 });
    const saved = Number(await b.page.getAttribute("body", "data-pending-run"));
    assert.ok(saved >= before - LONG.checkpoint_every && saved <= before + LONG.checkpoint_every,
      `saved at step ${saved}, reloaded at step ${before}: at most one checkpoint interval lost`);
    assert.match(await b.page.textContent("#resume-text"), /interrupted/);
    await b.page.click("#resume-run");
    await b.page.waitForFunction(() => document.body.dataset.resumedAt, null, { timeout: 120_000 });
    assert.equal(Number(await b.page.getAttribute("body", "data-resumed-at")), saved);
    await b.page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    assert.match(await b.page.textContent("#train-status"), /Finished after 400 steps/);
    const points = await b.page.evaluate(() => window.webtuneState.points.map((p) => p.step));
    assert.deepEqual(points, Array.from({ length: 401 }, (_, i) => i), "the chart has every step (0: the base), before and after the reload");
    const resumed = await downloadAdapter(b.page);
    assert.ok(resumed["adapter_model.safetensors"].equals(whole["adapter_model.safetensors"]),
      "the resumed run's adapter differs from the uninterrupted run's");
    assert.ok(resumed["adapter_config.json"].equals(whole["adapter_config.json"]));
    // A finished run leaves nothing to resume, and stays: after a reload it is listed, its
    // adapter the same bytes.
    await b.page.waitForFunction(() => document.body.dataset.kept, null, { timeout: 120_000 });
    await b.page.reload();
    await b.page.waitForSelector("body[data-ready='1']");
    assert.equal(await b.page.getAttribute("#resume-banner", "hidden"), "");
    await b.page.waitForSelector("#runs-table tbody tr");
    const [kept] = await Promise.all([b.page.waitForEvent("download"),
      b.page.click("#runs-table tbody tr:first-child button:text('Download')")]);
    const chunks = [];
    for await (const c of await kept.createReadStream()) chunks.push(c);
    const keptFiles = unzip(Buffer.concat(chunks));
    assert.ok(keptFiles["adapter_model.safetensors"].equals(resumed["adapter_model.safetensors"]),
      "the kept adapter differs from the one downloaded when the run finished");
    assert.deepEqual(b.errors, []);
  } finally {
    await browser.close();
    server.kill();
  }
});

test("a destroyed GPU device: the run moves to the CPU and finishes", { timeout: 900_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const { page } = await fresh(browser, `${url}?backend=webgpu`);
    await tinyModelAndText(page);
    assert.match(await page.textContent("#backend-status"), /WebGPU/);
    await settings(page, { steps: 16, seq_len: 16, batch_size: 2, lr: 0.02, checkpoint_every: 2 });
    await page.click("#start");
    await page.waitForFunction(() => Number(document.body.dataset.checkpoint) >= 4, null, { timeout: 600_000 });
    const worker = page.workers().at(-1);
    await worker.evaluate(() => self.webtuneGpuDevice.destroy());
    await page.waitForFunction(() => document.body.dataset.recovered === "1", null, { timeout: 120_000 });
    assert.match(await page.textContent("#notice"), /GPU stopped working.*on the CPU/);
    await page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    assert.match(await page.textContent("#backend-status"), /Running on the CPU/);
    assert.ok(Number(await page.getAttribute("body", "data-resumed-at")) >= 4);
    assert.match(await page.textContent("#train-status"), /Finished after 16 steps/);
    assert.equal(await page.$eval("#download", (b) => b.disabled), false);
  } finally {
    await browser.close();
    server.kill();
  }
});

// A run on the tiny model, broken by `inject` once it has saved step 40: the page notices
// (its notice matches `notice`), starts a fresh module and finishes the run from its checkpoint.
async function continuesAfter(query, inject, notice, backendStatus = /Running on the CPU/) {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const { page } = await fresh(browser, `${url}?${query}`);
    await tinyModelAndText(page);
    assert.match(await page.textContent("#backend-status"), backendStatus);
    await settings(page, LONG);
    await page.click("#start");
    await page.waitForFunction(() => Number(document.body.dataset.checkpoint) >= 40, null, { timeout: 300_000 });
    await inject(sessionWorker(page));
    await page.waitForFunction(() => document.body.dataset.recovered === "1", null, { timeout: 180_000 });
    assert.match(await page.textContent("#notice"), notice);
    await page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    assert.match(await page.textContent("#backend-status"), backendStatus);
    assert.ok(Number(await page.getAttribute("body", "data-resumed-at")) >= 40);
    assert.match(await page.textContent("#train-status"), /Finished after 400 steps/);
  } finally {
    await browser.close();
    server.kill();
  }
}

// What a panic looks like from JavaScript: a RuntimeError thrown in a promise continuation,
// leaving that promise unsettled forever.
const trap = (worker) => worker.evaluate(() => queueMicrotask(() => { throw new WebAssembly.RuntimeError("unreachable"); }));

test("a trap in the wasm module: a fresh module continues the run", { timeout: 900_000 }, () =>
  continuesAfter("backend=cpu", trap, /crashed.*continues from its last saved step/));

test("a crash on one of the thread pool's workers: a fresh module continues the run", { timeout: 900_000 }, () =>
  // Two threads whatever the machine's cores: the multi-threaded build, with a pool. A panic on a
  // pool thread (the module's test hook) reaches only the session's worker, which may be blocked
  // on the pool; the module posts it on the page's channel.
  continuesAfter("backend=cpu&threads=2",
    (worker) => worker.evaluate(() => import("./pkg-threads/webtune.js").then((m) => m.testCrashAPoolThread())),
    /crashed \(.*pool thread crashed on purpose.*continues from its last saved step/s,
    /Running on the CPU, 2 threads/));

test("a module that hangs instead of trapping: the watchdog restarts it and the run continues", { timeout: 900_000 }, () =>
  // A 3 s floor instead of ten minutes (still 10x the longest silence of the run so far). What a
  // pool thread that dies without a hook leaves: the session's worker blocked for good.
  continuesAfter("backend=cpu&watchdog=3",
    (worker) => worker.evaluate(() => setTimeout(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0), 0)),
    /stopped responding.*continues from its last saved step/s));

test("a crash again before the run got further: the page stops restarting; Resume with Save memory finishes", { timeout: 900_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const { page } = await fresh(browser, `${url}?backend=cpu`);
    await tinyModelAndText(page);
    // Saved at the start only (the next save would be at step 1000): every restart resumes from 0.
    await settings(page, { ...LONG, checkpoint_every: 1000 });
    await page.click("#start");
    await page.waitForFunction(() => (window.webtuneState.points.at(-1)?.step ?? 0) >= 5, null, { timeout: 300_000 });
    await trap(sessionWorker(page));
    await page.waitForFunction(() => document.body.dataset.recovered === "1" && document.body.dataset.resumedAt === "0", null, { timeout: 120_000 });
    await page.waitForFunction(() => (window.webtuneState.points.at(-1)?.step ?? 0) >= 2, null, { timeout: 300_000 });
    // The same crash before any newer save: restarting again would loop.
    await trap(sessionWorker(page));
    await page.waitForFunction(() => document.body.dataset.crashLoop === "1", null, { timeout: 120_000 });
    assert.match(await page.textContent("#notice"), /crashed again.*stopped.*Resume tries again/s);
    await page.waitForSelector("#resume-banner:not([hidden])", { timeout: 120_000 });
    assert.equal(await page.getAttribute("body", "data-recovered"), "2");
    // The person turns on Save memory (the run switches: same gradients) and resumes.
    await page.check("input[name=recompute]");
    await page.click("#resume-run");
    await page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    assert.match(await page.textContent("#train-status"), /Finished after 400 steps/);
    assert.equal(await page.isChecked("input[name=recompute]"), true);
  } finally {
    await browser.close();
    server.kill();
  }
});

test("a pause during the final step still finishes the run", { timeout: 600_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const { page, errors } = await fresh(browser, `${url}?backend=cpu`);
    await tinyModelAndText(page);
    await settings(page, { steps: 1, seq_len: 16, batch_size: 2 });
    await page.click("#start");
    // The only step is done; the worker now writes the base model's sample: pause lands there.
    await page.waitForFunction(() => document.body.dataset.progress === "100", null, { timeout: 300_000 });
    await page.evaluate(() => document.getElementById("pause").click());
    await page.waitForSelector("body[data-done='1']", { timeout: 300_000 });
    assert.match(await page.textContent("#train-status"), /Finished after 1 steps/);
    assert.equal(await page.$eval("#download", (b) => b.disabled), false);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    server.kill();
  }
});

test("the server answers a malformed request with 400 and lists no folder", { timeout: 60_000 }, async () => {
  const { server, url } = await startServer();
  try {
    const { hostname, port } = new URL(url);
    const raw = (text) => new Promise((resolve, reject) => {
      const socket = net.connect(Number(port), hostname, () => socket.end(text));
      let data = "";
      socket.on("data", (d) => { data += d; });
      socket.on("end", () => resolve(data));
      socket.on("error", reject);
    });
    // A request line without a version gets an HTTP/0.9-style answer: the body says 400.
    assert.match(await raw("GARBAGE\r\n\r\n"), /Error code: 400/);
    assert.match(await raw("GET / HTTP/1.1 extra words\r\n\r\n"), /Error code: 400/);
    assert.match(await raw("GET /pkg/ HTTP/1.0\r\n\r\n"), /^HTTP\/1\.[01] 40[34]/);
    const listing = await (await fetch(new URL("pkg/", url))).text();
    assert.doesNotMatch(listing, /webtune\.js|Directory listing/);
  } finally {
    server.kill();
  }
});

test("the server sends the page's code brotli-compressed where the browser takes it, else gzip", { timeout: 60_000 }, async () => {
  const { server, url } = await startServer();
  try {
    const get = (path, encoding) => new Promise((resolve, reject) => {
      http.get(new URL(path, url), { headers: encoding ? { "Accept-Encoding": encoding } : {} }, (res) => {
        const chunks = [];
        res.on("data", (d) => chunks.push(d));
        res.on("end", () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
      }).on("error", reject);
    });
    const decode = { br: zlib.brotliDecompressSync, gzip: zlib.gunzipSync };
    // web/build.sh leaves compressed copies of both builds and of the page's own files.
    for (const path of ["pkg/webtune_bg.wasm", "pkg-threads/webtune_bg.wasm", "pkg/webtune.js", "app.js", "/"]) {
      const file = readFileSync(join(root, "web", path === "/" ? "index.html" : path));
      const asked = [["gzip, deflate, br, zstd", "br"], ["gzip, deflate", "gzip"], ["br;q=0, gzip", "gzip"], [null, undefined]];
      for (const [accept, expected] of asked) {
        const { headers, body } = await get(path, accept);
        assert.equal(headers["content-encoding"], expected, `${path} for ${accept}`);
        assert.equal(Number(headers["content-length"]), body.length, path);
        assert.ok((expected ? decode[expected](body) : body).equals(file), `${path} for ${accept}: not the file`);
        if (path.endsWith(".wasm")) assert.equal(headers["content-type"], "application/wasm");
      }
    }
  } finally {
    server.kill();
  }
});
