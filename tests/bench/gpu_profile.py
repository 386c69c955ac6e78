#!/usr/bin/env python3
"""Where a GPU training step's time goes: the summary of `PROFILE=1 bash tests/bench/gpu.sh`.

Reads the runs' results folder (JSON, `.time`, and cubecl's per-kernel log `.kernels`) and prints
markdown: kernels and GPU seconds per step and per generated token (differences between runs that
differ only in measured steps or generated tokens, so loading, compiling, warm-up and the final
evaluation cancel), wall against CPU seconds per step, the kernels that take the most GPU time,
and how a step's time grows with the batch, beside PyTorch + PEFT.
"""
import json
import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def seconds(text):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def short(name):
    """cubecl's kernel names: `Family | args... | Variant_hash`; the first and the last say it."""
    parts = [p.strip() for p in name.split("|")]
    return parts[0] if len(parts) == 1 else f"{parts[0]} … {parts[-1]}"


def kernels(path):
    """name -> (count, GPU seconds) over a run, and the launches that had no time."""
    per = defaultdict(lambda: [0, 0.0])
    unmeasured = 0
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return None, 0
    for line in lines:
        if not line.startswith("| "):
            continue
        _, dur, name = line.split("|", 2)
        s = seconds(dur)
        key = short(name)
        per[key][0] += 1
        if s is None:
            unmeasured += 1
        else:
            per[key][1] += s
    return per, unmeasured


def load(out, name):
    try:
        return json.loads(open(f"{out}/{name}.json").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def times(out, name):
    try:
        wall, user, sys_ = map(float, open(f"{out}/{name}.time").read().split()[-3:])
        return wall, user + sys_
    except (OSError, ValueError):
        return None


def diff(a, b, n):
    """Per unit: (b - a) / n for each kernel name."""
    names = set(a) | set(b)
    d = {k: ((b.get(k, [0, 0])[0] - a.get(k, [0, 0])[0]) / n,
             (b.get(k, [0, 0])[1] - a.get(k, [0, 0])[1]) / n) for k in names}
    return d


def main(out):
    s1, u1 = kernels(f"{out}/prof-s1.kernels")
    s5, u5 = kernels(f"{out}/prof-s5.kernels")
    g16, _ = kernels(f"{out}/prof-g16.kernels")
    print("### Where a GPU training step's time goes (SmolLM2 shapes, r=8 q,v, 4x128)\n")
    if s1 is None or s5 is None:
        print("(no profile: the profiled runs failed; see their logs)")
    else:
        step = diff(s1, s5, 4)
        count = sum(c for c, _ in step.values())
        gpu = sum(t for _, t in step.values())
        j = load(out, "prof-s5")
        wall = sum(j["step_secs"]) / len(j["step_secs"]) if j else None
        print(f"- cubecl's profiler, steps 1 vs 5: **{count:,.0f} kernels per step**, their GPU time "
              f"**{gpu * 1e3:,.1f} ms** per step" + (f" (the profiled step's wall: {wall * 1e3:,.1f} ms)" if wall else "")
              + (f"; {u5 - u1} launches without a time" if u5 - u1 else ""))
        if g16 is not None:
            tok = diff(s1, g16, 32)
            jg = load(out, "prof-g16")
            print(f"- generation, 0 vs 16 tokens (base and adapted: 32 tokens, 2 prompts): "
                  f"{sum(c for c, _ in tok.values()):,.0f} kernels and "
                  f"{sum(t for _, t in tok.values()) * 1e3:,.2f} ms GPU time per token"
                  + (f"; measured {jg.get('generate_base_tokens_per_sec') or 0:,.1f} / "
                     f"{jg.get('generate_adapted_tokens_per_sec') or 0:,.1f} tokens/s (base / adapted)" if jg else ""))
    t1, t9 = times(out, "time-s1"), times(out, "time-s9")
    j9 = load(out, "time-s9")
    if t1 and t9:
        w = (t9[0] - t1[0]) / 8
        c = (t9[1] - t1[1]) / 8
        mean = sum(j9["step_secs"]) / len(j9["step_secs"]) if j9 else None
        print(f"- unprofiled, steps 1 vs 9: {w * 1e3:,.1f} ms wall and **{c * 1e3:,.1f} ms of CPU** "
              f"(user + system, all threads) per step" + (f"; the bench's mean step {mean * 1e3:,.1f} ms" if mean else ""))
    if s1 is not None and s5 is not None:
        print("\nKernels by GPU time per training step:\n")
        print("| kernel | launches per step | GPU ms per step |")
        print("|---|---:|---:|")
        for k, (c, t) in sorted(step.items(), key=lambda kv: -kv[1][1])[:15]:
            print(f"| `{k[:90]}` | {c:,.1f} | {t * 1e3:,.2f} |")
    print("\nStep time against batch (x 128 tokens), same GPU:\n")
    print("| batch | webtune step s | webtune tokens/s | PyTorch + PEFT step s | PyTorch tokens/s |")
    print("|---:|---:|---:|---:|---:|")
    for b in (1, 4, 16):
        w, t = load(out, f"smollm2-b{b}"), load(out, f"torch-b{b}")
        f = lambda r, k, fmt: format(r[k], fmt) if r else "–"
        print(f"| {b} | {f(w, 'median_step_secs', '.3f')} | {f(w, 'train_tokens_per_sec', ',.0f')} | "
              f"{f(t, 'median_step_secs', '.3f')} | {f(t, 'train_tokens_per_sec', ',.0f')} |")


if __name__ == "__main__":
    main(sys.argv[1])
