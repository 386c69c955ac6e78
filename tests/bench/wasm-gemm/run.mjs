// Times wasm-gemm-bench's `run` in headless Chromium, for each wasm file given, alternately
// (this machine's speed moves): GFLOP/s per matmul shape, best of 3, each shape ~3 GFLOP.
// node run.mjs A.wasm B.wasm[:export] [rounds] (the export timed: `run` unless named)
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

// playwright-core is the e2e tests' (tests/setup.sh installs it there).
const { chromium } = createRequire(new URL("../../e2e/package.json", import.meta.url))(
  "playwright-core",
);

const files = process.argv.slice(2).filter((a) => /\.wasm(:\w+)?$/.test(a));
const rounds = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 3);
// SmolLM2-135M's products for 4 x 128 tokens: q/o (576 -> 576), k/v (576 -> 192), MLP up and
// gate (576 -> 1536), down (1536 -> 576), weight-gradient-shaped and the LM head's (a 3072-row
// slice of the 49152-token vocabulary).
const shapes = [
  [512, 576, 576, 1],
  [512, 192, 576, 1],
  [512, 1536, 576, 1],
  [512, 576, 1536, 1],
  [512, 576, 576, 0],
  [576, 576, 512, 0],
  [512, 3072, 576, 1],
];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const page = await browser.newPage();
const measure = (b64, name) =>
  page.evaluate(
    async ({ b64, name, shapes }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const { instance } = await WebAssembly.instantiate(bytes, {});
      const run = instance.exports[name];
      const out = [];
      for (const [m, n, k, t] of shapes) {
        const flop = 2 * m * n * k;
        const iters = Math.max(2, Math.round(3e9 / flop));
        run(m, n, k, 2, t); // warm-up (V8 tiers up)
        let best = Infinity;
        for (let r = 0; r < 3; r++) {
          const t0 = performance.now();
          run(m, n, k, iters, t);
          best = Math.min(best, (performance.now() - t0) / iters);
        }
        out.push(flop / best / 1e6);
      }
      return out;
    },
    { b64, name, shapes },
  );

const wasm = files.map((f) => readFileSync(f.replace(/:\w+$/, "")).toString("base64"));
const exportOf = (f) => f.match(/:(\w+)$/)?.[1] ?? "run";
const header = shapes.map(([m, n, k, t]) => `${m}x${n}x${k}${t ? "ᵀ" : ""}`);
console.log(["file", ...header, "mean"].join(" | "));
for (let r = 0; r < rounds; r++) {
  for (let i = 0; i < files.length; i++) {
    const g = await measure(wasm[i], exportOf(files[i]));
    const mean = g.reduce((a, b) => a + b, 0) / g.length;
    console.log([files[i], ...g.map((x) => x.toFixed(1)), mean.toFixed(1)].join(" | "));
  }
}
await browser.close();
