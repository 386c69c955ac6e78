// Times wasm-kernels-bench's `run` in headless Chromium for two wasm files, alternately (this
// machine's speed moves): ms per kernel call, the median of `rounds`.
// node run.mjs A.wasm B.wasm [rounds]
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

// playwright-core is the e2e tests' (tests/setup.sh installs it there).
const { chromium } = createRequire(new URL("../../e2e/package.json", import.meta.url))(
  "playwright-core",
);

const files = process.argv.slice(2).filter((a) => a.endsWith(".wasm"));
const rounds = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 3);
// The kernels in src/lib.rs's order, with SmolLM2's shapes at 4 x 128 tokens.
const kernels = [
  "log_sum_exp [64, 49152]",
  "cross_entropy_grad [64, 49152]",
  "silu_mul [512, 1536]",
  "silu_mul_backward [512, 1536]",
  "causal_softmax [36, 128, 128]",
  "causal_softmax_backward [36, 128, 128]",
  "rms_norm [512, 576]",
  "rms_norm_backward [512, 576]",
  "f16_few_rows, 1 row by a layer's 7 projections (f16)",
  "f16_few_rows, 1 row by [576, 576] (f16, in L2) 7 times",
];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const page = await browser.newPage();
const measure = (b64, k) =>
  page.evaluate(
    async ({ b64, k }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const { instance } = await WebAssembly.instantiate(bytes, {});
      const run = instance.exports.run;
      run(k, 3); // warm-up (V8 tiers up)
      const reps = 20;
      const t0 = performance.now();
      run(k, reps);
      return (performance.now() - t0) / reps;
    },
    { b64, k },
  );

const wasm = files.map((f) => readFileSync(f).toString("base64"));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(["kernel", ...files.map((f) => `${f} ms`), "ratio"].join(" | "));
for (let k = 0; k < kernels.length; k++) {
  const times = files.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < files.length; i++) times[i].push(await measure(wasm[i], k));
  }
  const m = times.map(median);
  console.log([kernels[k], ...m.map((x) => x.toFixed(3)), (m[0] / m[m.length - 1]).toFixed(2) + "x"].join(" | "));
}
await browser.close();
