// The JS API as an npm package (web/build.sh --npm): an example app that imports it
// (tests/e2e/npm-example) trains the tiny model in Chromium and downloads a PEFT adapter.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFileSync, existsSync } from "node:fs";
import { extname, join, normalize } from "node:path";
import { launch, root, unzip, watchErrors } from "./helpers.mjs";

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".gguf": "application/octet-stream" };

/** The example at /, the package at /node_modules/webtune/, the tiny model beside them. */
function serve() {
  const mounts = [
    ["/node_modules/webtune/", join(root, "web/npm")],
    ["/tiny-llama-q.gguf", join(root, "tests/fixtures/tiny-llama-q.gguf")],
    ["/", join(root, "tests/e2e/npm-example")],
  ];
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const [prefix, dir] = mounts.find(([p]) => path.startsWith(p));
    const rest = normalize(path.slice(prefix.length) || (prefix === "/" ? "index.html" : ""));
    const file = prefix.endsWith("/") ? join(dir, rest) : dir;
    if (rest.startsWith("..") || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, url: `http://127.0.0.1:${server.address().port}/` })));
}

test("an app built on the npm package trains the tiny model and downloads its adapter", { timeout: 300_000 }, async () => {
  const pkg = JSON.parse(readFileSync(join(root, "web/npm/package.json"), "utf8"));
  for (const f of pkg.files) assert.ok(existsSync(join(root, "web/npm", f)), `the package holds ${f}`);
  assert.match(readFileSync(join(root, "web/npm/webtune.d.ts"), "utf8"), /export interface RunSpec/);
  const { server, url } = await serve();
  const browser = await launch();
  try {
    const page = await (await browser.newContext({ acceptDownloads: true })).newPage();
    const errors = watchErrors(page);
    await page.goto(url);
    const [download] = await Promise.all([page.waitForEvent("download", { timeout: 240_000 }), page.click("#train")]);
    await page.waitForSelector("body[data-done]");
    assert.equal(await page.getAttribute("body", "data-done"), "finished", await page.textContent("#log"));
    assert.match(await page.textContent("#log"), /step 4\/4: loss [\d.]+ val [\d.]+/);
    const chunks = [];
    for await (const c of await download.createReadStream()) chunks.push(c);
    const files = unzip(Buffer.concat(chunks));
    assert.ok(files["adapter_config.json"] && files["adapter_model.safetensors"]);
    assert.equal(JSON.parse(files["adapter_config.json"].toString()).peft_type, "LORA");
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    server.close();
  }
});
