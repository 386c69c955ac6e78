// End to end: inputs at the page's limits leave it usable. A 60 MB text file (under the 64 MB
// limit) is read, tokenized in bounded pieces and trained on; a prompt longer than the model's
// context is a message naming the limit, and the next question is answered.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { launch, root, settings, startServer, watchErrors } from "./helpers.mjs";

test("a 60 MB text file trains, an over-long prompt is a message, and the page stays usable", { timeout: 900_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(url);
    await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
    await page.setInputFiles("#model-files", join(root, "tests/fixtures/tiny-llama-q.gguf"));
    await page.waitForSelector("#model-info:not([hidden])", { timeout: 60_000 });

    // 60 MB of text, made in the page and dropped.
    const mb = await page.evaluate(() => {
      const text = "the cat sat on the mat and the dog sat on the log. ".repeat(1_180_000);
      const dt = new DataTransfer();
      dt.items.add(new File([text], "big.txt", { type: "text/plain" }));
      document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
      return text.length / 1e6;
    });
    assert.ok(mb > 60);
    await page.waitForFunction(() => document.querySelector("#text-table tbody td.status")?.textContent === "ready", null, { timeout: 600_000 });
    await settings(page, { steps: 2, batch_size: 2, seq_len: 16 });
    await page.click("#start");
    await page.waitForSelector("body[data-done='1']", { timeout: 300_000 });
    assert.match(await page.textContent("#train-status"), /Finished after 2 steps/);

    // A question longer than the model reads at once (64 positions): a message, no trap.
    await page.fill("#chat-prompt", "why did the cat sit on the mat ".repeat(80));
    await page.click("#chat-ask");
    await page.waitForSelector("#error:not([hidden])", { timeout: 60_000 });
    assert.match(await page.textContent("#error"), /64/);
    await page.click("#error button");
    // Still usable: a short question is answered by both models.
    await page.fill("#chat-prompt", "where is the cat?");
    await page.click("#chat-ask");
    await page.waitForFunction(() => document.getElementById("chat-adapted").textContent.length > 0, null, { timeout: 120_000 });
    await page.waitForFunction(() => window.webtuneState.memoryMb != null);
    // The module's memory at its peak so far (a wasm memory never shrinks): the 60 MB file's
    // tokens and windows, not the tokenizer's transient copies of the whole text.
    const memory = await page.evaluate(() => window.webtuneState.memoryMb);
    console.log(`a ${mb.toFixed(1)} MB text file trained on; the module's memory at its peak: ${memory.toFixed(0)} MB`);
    assert.ok(memory < 1500, `${memory} MB of wasm memory`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    server.kill();
  }
});

// The page estimates what a model and a run take in memory before it allocates them
// (crate/core/src/memory.rs), against what it may use: here a limit of 600 MiB (?memory=600) on
// the CPU backend, below wasm32's 4 GiB. SmolLM2 with 32-bit weights is refused before it
// loads, naming what fits (16-bit weights); the default run is flagged in the plan and refused at
// Start, naming "Save memory"; with it the run trains, and the module's memory stays under the
// limit the estimate held it to.
test("a model or a run over the memory here is refused with what would fit", { timeout: 600_000 }, async () => {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(`${url}?backend=cpu&memory=600`);
    await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
    await page.uncheck("input[name=base_f16]");
    await page.click("#load-default");
    await page.waitForSelector("#error:not([hidden])", { timeout: 120_000 });
    const refused = await page.textContent("#error");
    assert.match(refused, /more than the 600 MiB available here: with 16-bit weights it needs ~\d+ MiB/, refused);
    assert.ok(await page.isHidden("#model-info"));
    await page.click("#error button");

    await page.check("input[name=base_f16]");
    await page.click("#load-default");
    await page.waitForSelector("#model-info:not([hidden])", { timeout: 120_000 });
    await page.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(["the cat sat on the mat and the dog sat on the log. ".repeat(400)], "a.txt"));
      document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    await page.waitForFunction(() => document.querySelector("#text-table tbody td.status")?.textContent === "ready", null, { timeout: 60_000 });
    await page.uncheck("input[name=recompute]");
    await settings(page, { steps: 1, batch_size: 4, seq_len: 128 });
    await page.waitForSelector("#plan-memory:not([hidden])", { timeout: 30_000 });
    const flagged = await page.textContent("#plan-memory");
    assert.match(flagged, /^This run needs ~.* more than the 600 MiB available here: with "Save memory" it needs/, flagged);
    await page.click("#start");
    await page.waitForSelector("#error:not([hidden])", { timeout: 60_000 });
    assert.match(await page.textContent("#error"), /this run needs ~/);
    await page.click("#error button");

    await page.check("input[name=recompute]");
    await page.waitForSelector("#plan-memory[hidden]", { state: "attached", timeout: 30_000 });
    assert.match(await page.textContent("#plan"), /memory ~\d+ MiB of the 600 MiB here/);
    await page.click("#start");
    await page.waitForSelector("body[data-done='1']", { timeout: 300_000 });
    // The module's memory after the step (MiB): a wasm memory never shrinks, so its peak.
    const { peak, estimate } = await page.evaluate(() => ({
      peak: window.webtuneState.points.at(-1).memory_mb,
      estimate: window.webtuneState.plan.memory.peak / 2 ** 20,
    }));
    console.log(`SmolLM2, 16-bit weights, "Save memory", 4 x 128: peak ${peak.toFixed(0)} MiB, estimated ${estimate.toFixed(0)}`);
    assert.ok(peak <= 600, `${peak} MiB`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    server.kill();
  }
});
