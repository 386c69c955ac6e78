// Shared by the end-to-end tests: the server, the browser, the tiny model's setup, zip reading.
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = join(dirname(fileURLToPath(import.meta.url)), "../..");

/** web/serve.py on a free port; `args` are more of its flags. */
export function startServer(args = []) {
  return new Promise((resolve, reject) => {
    const server = spawn("python3", [join(root, "web/serve.py"), "--port", "0", ...args], { env: { ...process.env, WEBTUNE_QUIET: "1" } });
    server.on("error", reject);
    server.stderr.on("data", (d) => process.stderr.write(d));
    server.stdout.on("data", (d) => {
      const m = /serving (http:\/\/[^ ]+\/)/.exec(String(d));
      if (m) resolve({ server, url: m[1] });
    });
    setTimeout(() => reject(new Error("the server did not start")), 15000);
  });
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--enable-unsafe-webgpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-sandbox"],
  });
}

/** The entries of a ZIP whose entries are stored (as webtune writes them). */
export function unzip(buf) {
  const files = {};
  let p = 0;
  while (buf.readUInt32LE(p) === 0x04034b50) {
    const size = buf.readUInt32LE(p + 18);
    const nameLen = buf.readUInt16LE(p + 26);
    const extra = buf.readUInt16LE(p + 28);
    const name = buf.toString("utf8", p + 30, p + 30 + nameLen);
    const start = p + 30 + nameLen + extra;
    files[name] = buf.subarray(start, start + size);
    p = start + size;
  }
  return files;
}

export function safetensorsHeader(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  return JSON.parse(buf.toString("utf8", 8, 8 + n));
}

/** The F32 tensors of a safetensors file: `{ name: { shape, data: Float32Array } }`. */
export function safetensorsF32(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.toString("utf8", 8, 8 + n));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__" || t.dtype !== "F32") continue;
    const [a, b] = t.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    out[name] = { shape: t.shape, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
  }
  return out;
}

/** Collects page errors and console errors into the returned array. */
export function watchErrors(page) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  return errors;
}

/** Loads the tiny fixture model through the file input and drops one text file. */
export async function tinyModelAndText(page) {
  await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
  await page.setInputFiles("#model-files", join(root, "tests/fixtures/tiny-llama-q.gguf"));
  await page.waitForSelector("#model-info:not([hidden])", { timeout: 60_000 });
  await page.evaluate(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(["the cat sat on the mat and the dog sat on the log. ".repeat(60)], "cats.txt", { type: "text/plain" }));
    document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  });
  await page.waitForFunction(() => [...document.querySelectorAll("#text-table tbody td.status")].some((td) => td.textContent === "ready"));
}

/** Fills the settings form. */
export async function settings(page, values) {
  for (const [name, value] of Object.entries(values)) await page.fill(`input[name=${name}]`, String(value));
}

/** Clicks Download and returns the adapter's files. */
export async function downloadAdapter(page) {
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const stream = await download.createReadStream();
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return unzip(Buffer.concat(chunks));
}

/** The data offsets of a GGUF file's tensors: `{ name: { type, dims, start } }` (start: the byte
 * where its data begins in the file). Enough of GGUF v2/v3 to find a tensor's bytes. */
export function ggufTensors(buf) {
  let p = 8; // magic, version
  const u32 = () => { const v = buf.readUInt32LE(p); p += 4; return v; };
  const u64 = () => { const v = Number(buf.readBigUInt64LE(p)); p += 8; return v; };
  const str = () => { const n = u64(); const s = buf.toString("utf8", p, p + n); p += n; return s; };
  const sizes = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const value = (type) => {
    if (type === 8) return str();
    if (type === 9) { const t = u32(); const n = u64(); const items = []; for (let i = 0; i < n; i++) items.push(value(t)); return items; }
    const at = p; p += sizes[type];
    return type === 4 ? buf.readUInt32LE(at) : type === 6 ? buf.readFloatLE(at) : type === 10 ? Number(buf.readBigUInt64LE(at)) : buf[at];
  };
  const nTensors = u64(), nKv = u64();
  const meta = {};
  for (let i = 0; i < nKv; i++) { const k = str(); meta[k] = value(u32()); }
  const infos = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str(); const dims = []; const nd = u32();
    for (let d = 0; d < nd; d++) dims.push(u64());
    infos.push({ name, dims, type: u32(), offset: u64() });
  }
  const align = meta["general.alignment"] ?? 32;
  const data = Math.ceil(p / align) * align;
  return Object.fromEntries(infos.map((t) => [t.name, { type: t.type, dims: t.dims, start: data + t.offset }]));
}
