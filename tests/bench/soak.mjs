// Soak: long runs, their memory watched. The page trains the tiny model for many steps (saving
// progress every 100) and then answers many chat questions; the CLI trains many steps. Memory is
// sampled every 100 steps (or answers): the wasm module's (its peak so far), the page's JS heap,
// the origin's storage (IndexedDB), and the CLI's resident memory. Prints a Markdown table per
// part and each figure's slope over the second half (MB per 1,000 steps or answers: flat is ~0),
// and how many checkpoints the run left (one per run). Not a CI test.
//
//   node tests/bench/soak.mjs [--steps 5000] [--chats 1000] [--cli-steps 2000]
//
// Needs tests/setup.sh --browser, web/build.sh and the CLI built (cargo build -p webtune-cli).
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launch, root, settings, startServer, tinyModelAndText } from "../e2e/helpers.mjs";

const args = Object.fromEntries(
  process.argv
    .slice(2)
    .map((a, i, all) => (a.startsWith("--") ? [a.slice(2), Number(all[i + 1])] : null))
    .filter(Boolean),
);
const STEPS = args.steps ?? 5000;
const CHATS = args.chats ?? 1000;
const CLI_STEPS = args["cli-steps"] ?? 2000;
const target = process.env.CARGO_TARGET_DIR || join(process.env.HOME, ".cache/webtune/target");

/** Least-squares slope of y over x, for the second half of the samples, per 1,000 of x. */
function slope(rows, key) {
  const half = rows.slice(Math.floor(rows.length / 2)).filter((r) => r[key] != null);
  if (half.length < 2) return null;
  const mx = half.reduce((s, r) => s + r.at, 0) / half.length;
  const my = half.reduce((s, r) => s + r[key], 0) / half.length;
  const num = half.reduce((s, r) => s + (r.at - mx) * (r[key] - my), 0);
  const den = half.reduce((s, r) => s + (r.at - mx) ** 2, 0);
  return den ? (1000 * num) / den : null;
}

function table(title, unit, rows, keys) {
  console.log(`\n### ${title}\n`);
  console.log(`| ${unit} | ${keys.map(([, label]) => label).join(" | ")} |`);
  console.log(`|---|${keys.map(() => "---").join("|")}|`);
  const every = Math.max(1, Math.floor(rows.length / 10));
  for (const [i, r] of rows.entries())
    if (i % every === 0 || i === rows.length - 1)
      console.log(`| ${r.at} | ${keys.map(([k]) => (r[k] == null ? "–" : r[k].toFixed(1))).join(" | ")} |`);
  console.log(
    `\nSlope over the second half, MB per 1,000 ${unit}s: ` +
      keys.map(([k, label]) => `${label} ${slope(rows, k)?.toFixed(2) ?? "–"}`).join(", "),
  );
}

async function pageMemory(page) {
  return page.evaluate(async () => ({
    wasm: window.webtuneState.points.at(-1)?.memory_mb ?? window.webtuneState.memoryMb,
    heap: performance.memory ? performance.memory.usedJSHeapSize / 2 ** 20 : null,
    storage: (await navigator.storage.estimate()).usage / 2 ** 20,
  }));
}

async function soakPage() {
  const { server, url } = await startServer();
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.goto(`${url}?backend=cpu`);
    await tinyModelAndText(page);
    await settings(page, { steps: STEPS, seq_len: 16, checkpoint_every: 100 });
    await page.waitForSelector("#start:not([disabled])");
    const started = Date.now();
    await page.click("#start");
    const rows = [];
    for (let next = 100; next <= STEPS; next += 100) {
      await page.waitForFunction((n) => (window.webtuneState.points.at(-1)?.step ?? 0) >= n, next, {
        timeout: 600_000,
        polling: 200,
      });
      rows.push({ at: next, ...(await pageMemory(page)) });
    }
    await page.waitForSelector("body[data-done='1']", { timeout: 600_000 });
    const trainSecs = (Date.now() - started) / 1000;
    const checkpoints = await page.evaluate(
      () =>
        new Promise((resolve) => {
          const req = indexedDB.open("webtune");
          req.onsuccess = () => {
            const count = req.result.transaction("checkpoints").objectStore("checkpoints").count();
            count.onsuccess = () => resolve(count.result);
          };
        }),
    );
    table(`The page trains ${STEPS} steps (${trainSecs.toFixed(0)} s; checkpoints kept: ${checkpoints})`, "step", rows, [
      ["wasm", "wasm memory (MB)"],
      ["heap", "page JS heap (MB)"],
      ["storage", "storage (MB)"],
    ]);

    const chats = [];
    for (let i = 1; i <= CHATS; i++) {
      await page.fill("#chat-prompt", `Where did the cat sit? (${i})`);
      await page.click("#chat-ask");
      await page.waitForSelector("#chat-adapted[data-done='1']", { timeout: 120_000 });
      if (i % 100 === 0) chats.push({ at: i, ...(await pageMemory(page)) });
    }
    table(`The page answers ${CHATS} chat questions (base and adapted)`, "answer", chats, [
      ["wasm", "wasm memory (MB)"],
      ["heap", "page JS heap (MB)"],
      ["storage", "storage (MB)"],
    ]);
  } finally {
    await browser.close();
    server.kill();
  }
}

async function soakCli() {
  const dir = mkdtempSync(join(tmpdir(), "webtune-soak-"));
  const text = join(dir, "cats.txt");
  writeFileSync(text, "the cat sat on the mat and the dog sat on the log. ".repeat(400));
  const cli = join(target, "debug/webtune");
  const started = Date.now();
  const child = spawn(cli, [
    "train", "--model", join(root, "tests/fixtures/tiny-llama-q.gguf"), "--data", text, "--out", join(dir, "out"),
    "--steps", String(CLI_STEPS), "--seq-len", "16", "--checkpoint-every", "100", "--json",
  ]);
  const rows = [];
  let buffered = "";
  child.stdout.on("data", (d) => {
    buffered += d;
    const lines = buffered.split("\n");
    buffered = lines.pop();
    for (const line of lines) {
      const p = JSON.parse(line);
      if (p.step > 0 && p.step % 100 === 0) {
        const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"));
        rows.push({ at: p.step, rss: rss ? Number(rss[1]) / 1024 : null });
      }
    }
  });
  const code = await new Promise((resolve) => child.on("close", resolve));
  if (code !== 0) throw new Error(`webtune train exited with ${code}`);
  table(`The CLI trains ${CLI_STEPS} steps (${((Date.now() - started) / 1000).toFixed(0)} s)`, "step", rows, [
    ["rss", "resident memory (MB)"],
  ]);
  rmSync(dir, { recursive: true });
}

console.log(`Soak, ${new Date().toISOString().slice(0, 10)}: node tests/bench/soak.mjs --steps ${STEPS} --chats ${CHATS} --cli-steps ${CLI_STEPS}`);
await soakCli();
await soakPage();
