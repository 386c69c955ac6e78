// A model by its Hugging Face id, against a local server with the hub's URL layout (the model's
// file list at /api/models/ID/revision/REV, each file at /ID/resolve/COMMIT/FILE redirecting to
// where it is stored, as the hub does): the files are fetched, checked against the listed sizes
// and hashes, and loaded; a 404, a wrong size, a redirect and a slow server each do what a person
// needs; the page asks the hub nothing until a model is named by id, and asks nothing of any
// other origin.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { launch, root, startServer, watchErrors } from "./helpers.mjs";

const fixture = (p) => readFileSync(join(root, "tests/fixtures", p));
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const gpt2 = ["config.json", "vocab.json", "merges.txt", "model.safetensors"].map((name) => ({
  name,
  bytes: fixture(`tiny-gpt2/${name}`),
}));
// Each repository: its files (`lfs` ones listed by SHA-256, the rest by git blob id), and how
// the server misbehaves.
const REPOS = {
  "webtune-test/tiny-gpt2": { files: gpt2 },
  "webtune-test/slow": { files: gpt2, slow: "model.safetensors" },
  "webtune-test/wrong-size": { files: gpt2, listedSize: { "model.safetensors": 1000 } },
  "webtune-test/tiny-GGUF": {
    files: [{ name: "tiny-llama-q.gguf", bytes: fixture("tiny-llama-q.gguf") }],
    cardData: { base_model: "webtune-test/tiny-llama" },
  },
};

function sibling(repo, { name, bytes }) {
  const size = repo.listedSize?.[name] ?? bytes.length;
  if (name.endsWith(".safetensors") || name.endsWith(".gguf"))
    return { rfilename: name, size, lfs: { sha256: createHash("sha256").update(bytes).digest("hex"), size } };
  const blobId = createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");
  return { rfilename: name, size, blobId };
}

function startHub() {
  const requests = [];
  const server = createServer((req, res) => {
    requests.push(req.url);
    // CORS, as the hub sends it: the page is cross-origin isolated.
    res.setHeader("Access-Control-Allow-Origin", "*");
    const url = new URL(req.url, "http://hub");
    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (m) {
      const repo = REPOS[m[1]];
      if (!repo) return res.writeHead(404, { "Content-Type": "application/json" }).end('{"error":"Repository not found"}');
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({ id: m[1], sha: COMMIT, siblings: repo.files.map((f) => sibling(repo, f)), cardData: repo.cardData }));
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    if (m && REPOS[m[1]] && m[2] === COMMIT) {
      // The hub redirects a file to its storage.
      return res.writeHead(302, { Location: `/storage/${m[1]}/${m[3]}` }).end();
    }
    m = /^\/storage\/([^/]+\/[^/]+)\/(.+)$/.exec(url.pathname);
    const repo = m && REPOS[m[1]];
    const file = repo?.files.find((f) => f.name === decodeURIComponent(m[2]));
    if (!file) return res.writeHead(404).end("Entry not found");
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": file.bytes.length });
    if (repo.slow !== file.name) return res.end(file.bytes);
    // A slow server: 4 KiB every 50 ms.
    let at = 0;
    const timer = setInterval(() => {
      res.write(file.bytes.subarray(at, at + 4096));
      at += 4096;
      if (at >= file.bytes.length) {
        clearInterval(timer);
        res.end();
      }
    }, 50);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, requests, origin: `http://127.0.0.1:${server.address().port}` })));
}

test("a model by its Hugging Face id: fetched from the hub's URLs, checked, loaded; a 404, a wrong size, a slow server", { timeout: 600_000 }, async () => {
  const hub = await startHub();
  const { server, url } = await startServer(["--allow-model-origin", hub.origin]);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const errors = watchErrors(page);
    const origins = new Set();
    page.on("request", (r) => origins.add(new URL(r.url()).origin));
    await page.goto(`${url}?backend=cpu&hub=${encodeURIComponent(hub.origin)}`);
    await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
    // Nothing goes to the hub before a model is named by id.
    assert.deepEqual(hub.requests, []);
    const load = async (id) => {
      await page.fill("#model-url", id);
      await page.click("#model-url-form button");
    };
    const error = async () => {
      await page.waitForSelector("#error:not([hidden])", { timeout: 60_000 });
      const text = await page.textContent("#error");
      await page.click("#error button");
      return text;
    };

    await load("webtune-test/no-such-model");
    assert.match(await error(), /webtune-test\/no-such-model: the hub has no such model, or it is private or gated \(answered 404/);

    await load("webtune-test/wrong-size");
    assert.match(await error(), /webtune-test\/wrong-size: model\.safetensors: got [\d,]+ bytes, the hub lists 1,000/);

    // A slow server: the progress names the file as it arrives, and the model loads.
    await load("webtune-test/slow");
    await page.waitForFunction(() => /Loading the model \(model\.safetensors\): [\d.]+ kB of/.test(document.querySelector("#model-section .status")?.textContent ?? ""), null, { timeout: 60_000 });
    await page.waitForSelector("#model-info:not([hidden])", { timeout: 120_000 });
    let model = await page.evaluate(() => window.webtuneState.model);
    assert.equal(model.family, "gpt2");
    assert.equal(model.name, "webtune-test/slow");
    assert.equal(model.hub_id, "webtune-test/slow");
    // Fetched at the revision's commit, each file by a redirect (the hub's layout).
    assert.ok(hub.requests.includes("/api/models/webtune-test/slow/revision/main?blobs=true"));
    assert.ok(hub.requests.includes(`/webtune-test/slow/resolve/${COMMIT}/model.safetensors`));
    assert.ok(hub.requests.includes("/storage/webtune-test/slow/model.safetensors"));
    assert.equal(await page.evaluate(() => window.webtuneState.modelSource.revision), COMMIT);

    // A repository of GGUF files: the one named loads; its model card's base model is what
    // adapters name as their base.
    await load("webtune-test/tiny-GGUF");
    assert.match(await error(), /holds GGUF files: name one, e\.g\. webtune-test\/tiny-GGUF\/tiny-llama-q\.gguf/);
    await load("webtune-test/tiny-GGUF/tiny-llama-q.gguf");
    await page.waitForFunction(() => window.webtuneState.model?.family === "llama", null, { timeout: 120_000 });
    model = await page.evaluate(() => window.webtuneState.model);
    assert.equal(model.hub_id, "webtune-test/tiny-llama");
    assert.match(await page.textContent("#model-info"), /Hugging Face id\s*webtune-test\/tiny-llama/);

    // Neither a URL nor an id: said so, nothing requested.
    const before = hub.requests.length;
    await load("not a model");
    assert.match(await error(), /neither a Hugging Face model id \(org\/name\) nor an http\(s\) URL/);
    assert.equal(hub.requests.length, before);

    // The page asked nothing of any origin but its own and the hub it was given.
    assert.deepEqual([...origins].sort(), [new URL(url).origin, hub.origin].sort());
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    server.kill();
    hub.server.close();
  }
});
