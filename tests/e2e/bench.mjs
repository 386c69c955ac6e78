// The browser columns of the benchmark (tests/bench/run.sh): drives the real page in headless
// Chromium as a person would (open, load a model, add text, Start) and reads the trainer's own
// step times from the page. Prints one JSON object per line:
//
//   node tests/e2e/bench.mjs --backend cpu|webgpu [--model FILE.gguf] --text A.txt [--text B.txt]
//        [--steps 8] [--warmup 2] [--batch 4] [--seq-len N] [--threads 1] [--recompute]
//        [--base-f16 | --base-f32] [--products widened|int16] [--estimate]
//
// Without --model the page's "Load SmolLM2" button is used (the server's default model).
// "16-bit weights" as the page sets it (on for the CPU backend) unless --base-f16 / --base-f32
// says; `base_f16` in the output is what the model loaded with.
// `first_step_secs` is page open -> first finished training step, model download included;
// `memory_mb` the wasm module's memory at the end (its peak).
// `--estimate` waits before Start for the plan's duration estimate (from the page's measured step)
// and reports it beside the run's own time, Start to done (`estimated_secs`, `run_secs`).
import { join } from "node:path";
import { chromium } from "playwright-core";
import { root, startServer } from "./helpers.mjs";

function parseArgs(argv) {
  const a = { backend: "cpu", model: null, text: [], steps: 8, warmup: 2, batch: 4, seqLen: null, timeout: 3600 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i], v = argv[i + 1];
    if (k === "--recompute") { a.recompute = true; continue; } // "Save memory" (no value)
    if (k === "--estimate") { a.estimate = true; continue; } // (no value)
    if (k === "--base-f16") { a.baseF16 = true; continue; } // "16-bit weights" on (no value)
    if (k === "--base-f32") { a.baseF16 = false; continue; } // "16-bit weights" off (no value)
    if (k === "--backend") a.backend = v;
    else if (k === "--model") a.model = v;
    else if (k === "--text") a.text.push(v);
    else if (k === "--steps") a.steps = Number(v);
    else if (k === "--warmup") a.warmup = Number(v);
    else if (k === "--batch") a.batch = Number(v);
    else if (k === "--seq-len") a.seqLen = Number(v);
    else if (k === "--timeout") a.timeout = Number(v);
    else if (k === "--threads") a.threads = v;
    else if (k === "--products") a.products = v;
    else throw new Error(`unknown argument ${k}`);
    i++;
  }
  if (!a.text.length) throw new Error("give at least one --text file");
  return a;
}

const median = (xs) => {
  const v = [...xs].sort((x, y) => x - y);
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const { server, url } = await startServer();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--enable-unsafe-webgpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-sandbox"],
  });
  const ms = a.timeout * 1000;
  try {
    const page = await (await browser.newContext()).newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") errors.push(`${m.type()}: ${m.text()}`); });
    const t0 = Date.now();
    await page.goto(`${url}?backend=${a.backend}${a.threads ? `&threads=${a.threads}` : ""}`
      + (a.products ? `&products=${a.products}` : ""));
    await page.waitForSelector("body[data-ready='1']", { timeout: ms });
    const backend = await page.textContent("#backend-status");
    // Before the model loads, which reads it (checked later, it would load the model again).
    // (Greyed out where the backend cannot hold f16: the model loads in 32-bit, as `base_f16` says.)
    const f16Box = "input[name=base_f16]";
    if (a.baseF16 !== undefined && !(await page.isDisabled(f16Box))) await page.setChecked(f16Box, a.baseF16);
    if (a.model) await page.setInputFiles("#model-files", a.model);
    else await page.click("#load-default");
    await page.waitForFunction(() => window.webtuneState.model || !document.getElementById("error").hidden, null,
      { timeout: ms, polling: 100 });
    if (!(await page.evaluate(() => window.webtuneState.model))) {
      // Refused before loading (the page's memory estimate): what it said is the row.
      console.log(JSON.stringify({ browser: "headless " + browser.version(), backend: a.backend,
        backend_status: backend, refused: (await page.textContent("#error span")).trim(), errors }));
      return;
    }
    const modelSecs = (Date.now() - t0) / 1000;
    await page.setInputFiles("#text-files", a.text);
    await page.waitForFunction((n) => [...window.webtuneState.texts.values()].filter((t) => t.tokens || t.skipped).length === n,
      a.text.length, { timeout: ms, polling: 100 });
    await page.fill("input[name=steps]", String(a.warmup + a.steps));
    await page.fill("input[name=batch_size]", String(a.batch));
    // The page's default unless given: 128, or the model's context where it is shorter.
    if (a.seqLen != null) await page.fill("input[name=seq_len]", String(a.seqLen));
    const seqLen = Number(await page.inputValue("input[name=seq_len]"));
    if (a.recompute) await page.check("input[name=recompute]");
    await page.dispatchEvent("#settings", "input");
    await page.waitForSelector("#start:not([disabled])", { timeout: ms });
    let estimatedSecs = null;
    if (a.estimate) {
      await page.waitForFunction(() => window.webtuneState.plan?.estimated_secs != null, null, { timeout: ms, polling: 100 });
      estimatedSecs = await page.evaluate(() => window.webtuneState.plan.estimated_secs);
    }
    const started = Date.now();
    await page.click("#start");
    // The first training step (step 0, before it, is the base model's validation loss).
    await page.waitForFunction(() => window.webtuneState.points.some((p) => p.step > 0), null, { timeout: ms, polling: 50 });
    const firstStepSecs = (Date.now() - t0) / 1000;
    const startToFirstStep = (Date.now() - started) / 1000;
    await page.waitForSelector("body[data-done='1']", { timeout: ms });
    const runSecs = (Date.now() - started) / 1000;
    // The adapted model's sample, which the page generates when the run is done (the page's
    // default prompt, up to its sample length, greedy): generation's speed in the page.
    const done = Date.now();
    await page.waitForFunction(() => document.getElementById("sample-after").textContent.length > 0,
      null, { timeout: ms, polling: 50 });
    const sampleSecs = (Date.now() - done) / 1000;
    const sampleText = await page.textContent("#sample-after");
    const points = await page.evaluate(() => window.webtuneState.points.filter((p) => p.step > 0));
    const steps = points.map((p) => p.step_secs);
    // On a GPU the loss is read back only every few steps: a step that reads nothing is timed
    // when its work is queued and the next read pays for it, so only whole periods add up. The
    // warm-up then ends at the first read at or after it, and the figure is the mean of the
    // rest (the last step always reads). Where every step reads (the CPU): the median.
    const read = points.map((p) => p.train_loss != null);
    let warmup = Math.min(a.warmup, steps.length);
    const everyStepReads = read.slice(warmup).every(Boolean);
    while (!everyStepReads && warmup > 0 && warmup < steps.length && !read[warmup - 1]) warmup++;
    const measured = steps.slice(warmup);
    const med = everyStepReads ? median(measured) : measured.reduce((x, y) => x + y, 0) / measured.length;
    const evals = points.filter((p) => p.eval_secs != null).map((p) => p.eval_secs);
    console.log(JSON.stringify({
      browser: "headless " + browser.version(), backend: a.backend, backend_status: backend,
      model: await page.evaluate(() => window.webtuneState.model.name),
      base_f16: await page.evaluate(() => window.webtuneState.model.base_f16),
      batch: a.batch, seq_len: seqLen,
      model_ready_secs: modelSecs, first_step_secs: firstStepSecs,
      warmup_step_secs: steps.slice(0, warmup), step_secs: measured, median_step_secs: med,
      step_statistic: everyStepReads ? "median" : "mean",
      train_tokens_per_sec: (a.batch * seqLen) / med, eval_secs: evals.at(-1) ?? null,
      first_loss: points.find((p) => p.train_loss != null)?.train_loss ?? null,
      last_loss: points.at(-1)?.train_loss ?? null,
      // The module's memory after the last step: a wasm memory never shrinks, so its peak.
      memory_mb: points.at(-1)?.memory_mb ?? null, memory_steps: points.map((p) => p.memory_mb),
      // What the plan's estimate said the run would take (crate/core/src/memory.rs), in MiB.
      estimate_mb: await page.evaluate(() => (window.webtuneState.plan?.memory?.training ?? NaN) / 2 ** 20),
      sample_secs: sampleSecs, sample_text: sampleText,
      ...(a.estimate ? { estimated_secs: estimatedSecs, run_secs: runSecs, start_to_first_step_secs: startToFirstStep } : {}),
      errors,
    }));
  } finally {
    await browser.close();
    server.kill();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
