// Where a training step's time goes in the page: a V8 CPU profile of all the page's threads (the
// main thread, the session's worker, the wasm thread pool) from Chromium's tracing, summed by
// function and by kind of work for each thread.
//
//   node tests/bench/page-profile.mjs [--steps 6] [--from 2] [--to 5] [--threads N] [--text A.txt ...]
//        [--callers REGEX] [--base-f16 0|1] [--products widened|int16]
//
// `--base-f16 0|1`: "16-bit weights" off / on (without it: the page's default, on for the CPU);
// `--products`: their products (`?products=`).
//
// `--callers REGEX`: also the call paths (up to 6 frames) that lead to the functions matching it.
// SmolLM2 (the page's "Load SmolLM2"), the page's settings but `--steps`; traces from the end of
// step `--from` to the end of step `--to`. Without --text: three Shakespeare plays
// (tests/setup.sh --texts). Function names need a wasm module with its name section, which the
// release profile strips; for the multi-threaded build (what the page runs on a multi-core CPU):
//
//   CARGO_TARGET_DIR=$HOME/.cache/webtune/target-wasm-threads RUSTUP_TOOLCHAIN=nightly \
//   RUSTFLAGS="$(bash web/build.sh --threads-rustflags)" cargo rustc -p webtune-wasm --lib \
//     --crate-type cdylib --target wasm32-unknown-unknown --release --no-default-features \
//     --features threads -Z build-std=panic_abort,std -- -C strip=none
//   wasm-bindgen --target web --out-dir web/pkg-threads --out-name webtune --no-typescript \
//     $HOME/.cache/webtune/target-wasm-threads/wasm32-unknown-unknown/release/webtune_wasm.wasm
//
// (`bash web/build.sh` puts the stripped build back). Profiling slows the steps down ~20%.
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { join } from "node:path";

const { chromium } = createRequire(new URL("../e2e/package.json", import.meta.url))("playwright-core");
const { startServer } = await import("../e2e/helpers.mjs");

const a = { steps: 6, from: 2, to: 5, threads: null, text: [], callers: null, products: null };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const [k, v] = [argv[i].replace(/^--/, ""), argv[i + 1]];
  if (k === "text") a.text.push(v);
  else if (k === "callers") a.callers = new RegExp(v);
  else if (k === "products") a.products = v;
  else a[k] = Number(v);
}
if (!a.text.length) {
  const d = join(homedir(), ".cache/webtune/shakespeare");
  a.text = ["macbeth", "julius_caesar", "tempest"].map((p) => join(d, `${p}_gut.txt`));
}

// Kinds of work, by the function a sample was in (the first that matches).
const KINDS = [
  ["gemm (matmul)", /gemm/],
  ["int16 products' kernel", /int16::simd128::kernel|int16::kernel|int16::matmul/],
  ["int16 products' packing and quantizing", /int16|f16_scale/],
  ["webtune's fused kernels", /webtune::kernels::cpu/],
  ["waiting (pool, locks, idle)", /\(idle\)|\(program\)|Condvar|futex|Atomics|wait|sleep/i],
  ["copies and fills", /memcpy|memset|memmove|copy_from_slice|into_contiguous|copy_2d/],
  ["allocation", /dlmalloc|__rust_alloc|__rust_dealloc|__rdl_|realloc/],
  ["burn-flex's other ops", /burn_flex/],
  ["burn's autodiff", /burn_autodiff/],
];
const kindOf = (f) => (KINDS.find(([, re]) => re.test(f)) ?? ["other"])[0];

const { server, url } = await startServer();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-quic", "--no-first-run"],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${url}?backend=cpu${a.threads ? `&threads=${a.threads}` : ""}`
    + (a.products ? `&products=${a.products}` : ""));
  await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
  if (a["base-f16"] !== undefined) await page.setChecked("input[name=base_f16]", a["base-f16"] === 1);
  await page.click("#load-default");
  await page.waitForFunction(() => window.webtuneState.model, null, { timeout: 300_000, polling: 100 });
  await page.setInputFiles("#text-files", a.text);
  await page.waitForFunction((n) => [...window.webtuneState.texts.values()].filter((t) => t.tokens || t.skipped).length === n,
    a.text.length, { timeout: 300_000, polling: 100 });
  await page.fill("input[name=steps]", String(a.steps));
  await page.dispatchEvent("#settings", "input");
  await page.waitForSelector("#start:not([disabled])", { timeout: 300_000 });
  await page.click("#start");
  const stepsDone = (n) => page.waitForFunction((n) => window.webtuneState.points.length >= n, n, { timeout: 900_000, polling: 50 });
  await stepsDone(a.from);
  await browser.startTracing(page, { categories: ["disabled-by-default-v8.cpu_profiler"] });
  await stepsDone(a.to);
  const trace = JSON.parse((await browser.stopTracing()).toString("utf8"));
  const steps = await page.evaluate(() => window.webtuneState.points.map((p) => p.step_secs));

  // ProfileChunk events carry each thread's call tree (nodes) and its samples.
  const threads = new Map();
  for (const e of trace.traceEvents ?? trace) {
    if (e.name !== "ProfileChunk") continue;
    const key = `${e.pid}/${e.id}`;
    if (!threads.has(key)) threads.set(key, { names: new Map(), parents: new Map(), samples: [] });
    const t = threads.get(key);
    const p = e.args.data.cpuProfile ?? {};
    for (const n of p.nodes ?? []) {
      t.names.set(n.id, (n.callFrame.functionName || n.callFrame.url || "?").replace(/\[[0-9a-f]{16}\]/g, ""));
      if (n.parent !== undefined) t.parents.set(n.id, n.parent);
    }
    t.samples.push(...(p.samples ?? []));
  }
  console.log(`steps (s): ${steps.map((s) => s.toFixed(2)).join(" ")}; traced steps ${a.from + 1}-${a.to}`);
  const all = new Map();
  for (const [key, t] of [...threads].sort((x, y) => y[1].samples.length - x[1].samples.length)) {
    const kinds = new Map();
    for (const s of t.samples) {
      const f = t.names.get(s) ?? "?";
      kinds.set(kindOf(f), (kinds.get(kindOf(f)) ?? 0) + 1);
      all.set(f, (all.get(f) ?? 0) + 1);
    }
    const n = t.samples.length;
    const shares = [...kinds].sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k} ${((100 * v) / n).toFixed(1)}%`);
    console.log(`thread ${key} (${n} samples): ${shares.join(", ")}`);
  }
  if (a.callers) {
    // Call paths into the matching functions, all threads, by samples (inlined frames are not
    // in the tree: a path names the functions V8 did not inline).
    const paths = new Map();
    let matched = 0;
    for (const t of threads.values()) {
      for (const s of t.samples) {
        if (!a.callers.test(t.names.get(s) ?? "")) continue;
        matched++;
        const frames = [];
        for (let id = s; id !== undefined && frames.length < 6; id = t.parents.get(id)) {
          frames.push((t.names.get(id) ?? "?").replace(/<[^<>]*>/g, "<>").slice(0, 70));
        }
        const path = frames.join(" <- ");
        paths.set(path, (paths.get(path) ?? 0) + 1);
      }
    }
    console.log(`call paths into ${a.callers} (${matched} samples):`);
    for (const [path, v] of [...paths].sort((x, y) => y[1] - x[1]).slice(0, 15)) {
      console.log(`  ${String(v).padStart(6)}  ${path}`);
    }
  }
  const total = [...all.values()].reduce((x, y) => x + y, 0);
  console.log("functions, all threads (self time):");
  for (const [f, v] of [...all].sort((x, y) => y[1] - x[1]).slice(0, 25)) {
    console.log(`  ${((100 * v) / total).toFixed(1).padStart(5)}%  ${f.slice(0, 140)}`);
  }
} finally {
  await browser.close();
  server.kill();
}
