// A small app built on the npm package (web/build.sh --npm): trains the tiny fixture model on a
// few sentences and downloads its PEFT adapter. Type-checked against the package's types
// (tsconfig.json here), run by npm.test.mjs.
import init, { WebSession } from "webtune";

const logBox = /** @type {HTMLElement} */ (document.getElementById("log"));
const log = (/** @type {string} */ line) => (logBox.textContent += line + "\n");

async function train() {
  await init();
  const s = await WebSession.create("cpu");
  const bytes = new Uint8Array(await (await fetch("tiny-llama-q.gguf")).arrayBuffer());
  const model = s.loadGguf("tiny-llama-q.gguf", bytes);
  log(`model: ${model.family}, ${model.layers} layers, context ${model.context_length}`);
  const text = s.addText("cats.txt", new TextEncoder().encode("the cat sat on the mat. ".repeat(200)));
  log(`text: ${text.tokens} tokens`);
  const plan = s.start({ data: { seq_len: 16 }, train: { steps: 4, batch_size: 2 } });
  log(`plan: ${plan.trainable_parameters} trainable parameters`);
  /** @type {import("webtune").Progress} */
  let p;
  do {
    p = await s.step();
    log(`step ${p.step}/${p.total_steps}: loss ${p.train_loss?.toFixed(3)}` + (p.val_loss != null ? ` val ${p.val_loss.toFixed(3)}` : ""));
  } while (p.status === "running");
  const { zip } = await s.exportAdapter("f32");
  const a = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(new Blob([zip], { type: "application/zip" })),
    download: "adapter.zip",
  });
  a.click();
  log(`done: ${p.status}`);
  document.body.dataset.done = p.status;
}

/** @type {HTMLElement} */ (document.getElementById("train")).onclick = () => train().catch((e) => log(`error: ${e?.message ?? e}`));
