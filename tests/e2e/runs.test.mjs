// End to end: what a person teaches the page and keeps. Chat data trains on the answers, the
// page compares the base and the adapted model, a finished run stays after a reload and its
// adapter downloads the same bytes, and that adapter opened in a fresh page continues training;
// two tabs keep two runs; a full disk is a message that loses nothing saved; a broken model is
// refused naming its tensor; a misspelled setting from JavaScript is refused naming the key.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launch, root, startServer, tinyModelAndText, settings, watchErrors, unzip, ggufTensors } from "./helpers.mjs";

const TINY = join(root, "tests/fixtures/tiny-llama-q.gguf");
const tmp = mkdtempSync(join(tmpdir(), "webtune-runs-"));

async function fresh(context, url) {
  const page = await context.newPage();
  page.on("dialog", (d) => d.accept());
  const errors = watchErrors(page);
  await page.goto(url);
  await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
  return { page, errors };
}

async function loadTiny(page) {
  await page.setInputFiles("#model-files", TINY);
  await page.waitForSelector("#model-info:not([hidden])", { timeout: 60_000 });
}

async function drop(page, name, text) {
  await page.evaluate(([name, text]) => {
    const dt = new DataTransfer();
    dt.items.add(new File([text], name));
    document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, [name, text]);
}

async function downloaded(download) {
  const chunks = [];
  for await (const c of await download.createReadStream()) chunks.push(c);
  return Buffer.concat(chunks);
}

const CHATS = [
  ...Array.from({ length: 20 }, (_, i) => JSON.stringify({ messages: [
    { role: "user", content: i % 2 ? "Where is the cat?" : "Where is the dog?" },
    { role: "assistant", content: i % 2 ? "The cat sat on the mat." : "The dog sat on the log." },
  ] })),
  "{ this line is not JSON",
].join("\n");

test("chat data: the answers train, both models answer, the run stays, its adapter continues elsewhere", { timeout: 900_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const context = await browser.newContext({ acceptDownloads: true });
    const { page, errors } = await fresh(context, `${url}?backend=cpu`);
    await loadTiny(page);
    await drop(page, "chats.jsonl", CHATS);
    // Read as chat records, the broken line listed with its number, a preview of what is learned.
    await page.waitForFunction(() => /JSON Lines: chats/.test(document.querySelector("#text-table tbody td.kind")?.textContent ?? ""));
    assert.match(await page.textContent("#text-table tbody"), /20 examples/);
    assert.match(await page.textContent("#text-table tbody"), /line 21: not JSON/);
    assert.ok((await page.$$("#text-table pre.preview .learned")).length > 0, "the preview marks the learned answer");
    assert.match(await page.textContent("#text-table pre.preview .learned"), /sat on the/);
    await settings(page, { steps: 6, seq_len: 48, batch_size: 2, lr: 0.02 });
    await page.waitForFunction(() => /2 validation examples/.test(document.getElementById("plan").textContent));
    await page.click("#start");
    await page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    await page.waitForFunction(() => document.body.dataset.kept, null, { timeout: 120_000 });
    // The validation loss before (the base: the chart's first point) and after, in one line.
    const points = await page.evaluate(() => window.webtuneState.points);
    assert.equal(points[0].step, 0);
    assert.ok(points[0].val_loss > 0);
    assert.match(await page.textContent("#loss-line"), /Validation loss \d+\.\d+ → \d+\.\d+/);
    // The same question to both models, answered side by side (held-out questions offered).
    assert.ok((await page.$$("#chat-prompts button")).length > 0, "held-out questions are offered");
    await page.click("#chat-prompts button");
    await page.click("#chat-ask");
    await page.waitForSelector("#chat-base[data-done='1']", { timeout: 120_000 });
    await page.waitForSelector("#chat-adapted[data-done='1']", { timeout: 120_000 });
    const finished = await downloaded((await Promise.all([page.waitForEvent("download"), page.click("#download")]))[0]);

    // After a reload the finished run is listed and downloads the same adapter.
    await page.reload();
    await page.waitForSelector("body[data-ready='1']");
    await page.waitForSelector("#runs-table tbody tr");
    assert.match(await page.textContent("#runs-table tbody"), /6 of 6 · finished/);
    const kept = await downloaded((await Promise.all([page.waitForEvent("download"),
      page.click("#runs-table tbody tr:first-child button:text('Download')")]))[0]);
    assert.ok(unzip(kept)["adapter_model.safetensors"].equals(unzip(finished)["adapter_model.safetensors"]));
    assert.deepEqual(errors, []);

    // In a fresh page (another browser profile: nothing kept), the adapter opened from its zip
    // is what a run on new text continues.
    const zipPath = join(tmp, "adapter.zip");
    writeFileSync(zipPath, finished);
    const other = await browser.newContext({ acceptDownloads: true });
    const b = await fresh(other, `${url}?backend=cpu`);
    await tinyModelAndText(b.page);
    await b.page.setInputFiles("#adapter-files", zipPath);
    await b.page.waitForSelector("body[data-opened='1']", { timeout: 60_000 });
    assert.match(await b.page.textContent("#opened-text"), /rank 8, alpha 16, q_proj, v_proj/);
    await settings(b.page, { steps: 3, seq_len: 16, batch_size: 2, lr: 0.02 });
    await b.page.click("#start");
    await b.page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    assert.match(await b.page.textContent("#train-status"), /Finished after 3 steps/);
    assert.deepEqual(b.errors, []);
  } finally {
    await browser.close();
    server.kill();
  }
});

test("two tabs train two runs, and each resumes its own after both reload", { timeout: 900_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const context = await browser.newContext();
    const tabs = [];
    for (const steps of [300, 350]) {
      const { page } = await fresh(context, `${url}?backend=cpu&threads=1`);
      await tinyModelAndText(page);
      await settings(page, { steps, seq_len: 32, batch_size: 4, lr: 0.02, checkpoint_every: 10 });
      await page.click("#start");
      tabs.push({ page, steps });
    }
    for (const { page } of tabs) {
      await page.waitForFunction(() => Number(document.body.dataset.checkpoint) >= 20, null, { timeout: 300_000 });
    }
    for (const { page } of tabs) await page.reload();
    for (const { page, steps } of tabs) {
      await page.waitForSelector("#resume-banner:not([hidden])", { timeout: 120_000 });
      assert.match(await page.textContent("#resume-text"), new RegExp(`of ${steps} `), "each tab offers its own run");
      await page.click("#resume-run");
      await page.waitForFunction(() => document.body.dataset.resumedAt, null, { timeout: 120_000 });
    }
    for (const { page } of tabs) {
      const at = Number(await page.getAttribute("body", "data-resumed-at"));
      await page.waitForFunction((at) => (window.webtuneState.points.at(-1)?.step ?? 0) > at + 5, at, { timeout: 300_000 });
      await page.click("#stop");
    }
    // Both runs are kept, each its own record.
    await tabs[0].page.waitForSelector("body[data-done='1']", { timeout: 120_000 });
    await tabs[0].page.waitForFunction(() => document.querySelectorAll("#runs-table tbody tr").length === 2);
  } finally {
    await browser.close();
    server.kill();
  }
});

test("a full disk is a message naming what to delete, and loses nothing saved before", { timeout: 900_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    // The browser's own refusal: a quota (through the DevTools protocol) too small for the
    // model's copy. The run goes on; the message names what to free.
    const small = await browser.newContext();
    const cdp = await small.newCDPSession(await small.newPage());
    await cdp.send("Storage.overrideQuotaForOrigin", { origin: new URL(url).origin, quotaSize: 10_000 });
    const { page: refused } = await fresh(small, `${url}?backend=cpu`);
    await tinyModelAndText(refused);
    await settings(refused, { steps: 4, seq_len: 16, batch_size: 2 });
    await refused.click("#start");
    await refused.waitForFunction(() => /Not enough storage/.test(document.getElementById("notice").textContent));
    assert.match(await refused.textContent("#notice"), /Not enough storage in this browser for .*delete past runs/s);
    await refused.waitForSelector("body[data-done='1']", { timeout: 300_000 });

    // Room running out mid-run, as the browser's estimate tells it (Chromium's quota override
    // leaves an origin already storing unchecked): the next save is refused with the message,
    // the run goes on, and the progress saved before stays.
    const context = await browser.newContext();
    await context.addInitScript(() => {
      const real = navigator.storage.estimate.bind(navigator.storage);
      navigator.storage.estimate = async () => ({ ...(await real()), quota: window.__quota ?? 1e10, usage: 0 });
    });
    const { page } = await fresh(context, `${url}?backend=cpu`);
    await tinyModelAndText(page);
    await settings(page, { steps: 400, seq_len: 64, batch_size: 8, lr: 0.02, checkpoint_every: 5 });
    await page.click("#start");
    await page.waitForFunction(() => Number(document.body.dataset.checkpoint) >= 10, null, { timeout: 300_000 });
    await page.evaluate(() => { window.__quota = 1; });
    const saved = Number(await page.getAttribute("body", "data-checkpoint"));
    await page.waitForFunction(() => /Not enough storage/.test(document.getElementById("notice").textContent), null, { timeout: 300_000 });
    assert.match(await page.textContent("#notice"), /the run's progress.*delete past runs/s);
    const kept = Number(await page.getAttribute("body", "data-checkpoint"));
    assert.ok(kept >= saved && kept < 400, `the last step saved, ${kept}, is kept`);
    await page.reload();
    await page.waitForSelector("#resume-banner:not([hidden])", { timeout: 120_000 });
    assert.equal(Number(await page.getAttribute("body", "data-pending-run")), kept);
  } finally {
    await browser.close();
    server.kill();
  }
});

test("a model with a NaN weight is refused at load, naming the tensor", { timeout: 300_000 }, async () => {
  const bytes = readFileSync(TINY);
  const norm = ggufTensors(bytes)["output_norm.weight"];
  assert.equal(norm.type, 0, "an F32 tensor");
  bytes.writeFloatLE(NaN, norm.start + 4);
  const broken = join(tmp, "broken.gguf");
  writeFileSync(broken, bytes);
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const { page } = await fresh(await browser.newContext(), `${url}?backend=cpu`);
    await page.setInputFiles("#model-files", broken);
    await page.waitForSelector("#error:not([hidden])", { timeout: 60_000 });
    assert.match(await page.textContent("#error"), /broken\.gguf.*output_norm\.weight.*NaN or infinite/s);
    // The page stays usable: the sound model loads next.
    await loadTiny(page);
  } finally {
    await browser.close();
    server.kill();
  }
});

test("a misspelled setting from JavaScript is refused with its name", { timeout: 300_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const { page } = await fresh(await browser.newContext(), `${url}?backend=cpu`);
    const tiny = [...readFileSync(TINY)];
    const refused = await page.evaluate(async (tiny) => {
      const m = await import("./pkg/webtune.js");
      await m.default();
      const s = await m.WebSession.create("cpu");
      s.loadGguf("tiny.gguf", new Uint8Array(tiny));
      s.addText("a.txt", new TextEncoder().encode("the cat sat on the mat. ".repeat(50)));
      const messages = [];
      for (const spec of [{ train: { stpes: 3 } }, { lora: { rank: 4 } }, { optim: { lr: "fast" } }]) {
        try { s.plan(spec); messages.push("accepted"); } catch (e) { messages.push(e.message); }
      }
      return messages;
    }, tiny);
    assert.match(refused[0], /train.*stpes/);
    assert.match(refused[1], /lora.*rank/);
    assert.match(refused[2], /optim\.lr/);
  } finally {
    await browser.close();
    server.kill();
  }
});
