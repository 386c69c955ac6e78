#!/usr/bin/env python3
"""Prints the benchmark table (Markdown) from the JSON files tests/bench/run.sh wrote."""
import datetime
import json
import os
import platform
import subprocess
import sys


def load(folder, name):
    path = os.path.join(folder, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    return json.loads(text.splitlines()[-1]) if text else None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(x, digits=1):
    return "–" if x is None else f"{x:,.{digits}f}"


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "tests/out/bench"
    r = {n: load(folder, n) for n in [
        "native-smollm2", "native-smollm2-recompute", "native-smollm2-f16",
        "native-smollm2-recompute-f16", "native-smollm2-int16", "native-smollm2-recompute-int16",
        "native-tiny", "torch-smollm2",
        "browser-cpu-smollm2", "browser-cpu-smollm2-1t", "browser-cpu-smollm2-recompute",
        "browser-cpu-smollm2-f32", "browser-cpu-smollm2-recompute-f32",
        "browser-cpu-tiny", "browser-webgpu-tiny",
        "native-qwen05-recompute-f16", "native-qwen05", "native-qwen15-recompute-f16",
        "browser-cpu-qwen05-recompute", "browser-cpu-qwen15-recompute", "shipped"]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"{datetime.date.today()}, commit {commit or '?'}; `bash tests/bench/run.sh`.")
    print()
    print("| workload | where | training tokens/s | step s (median) | vs PyTorch | peak MB (load / train) | eval s | open → 1st step s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    torch = r["torch-smollm2"]
    native = r["native-smollm2"]
    rows = [
        ("SmolLM2-135M, r=8 q,v, 4x128", "PyTorch + PEFT (CPU, f32)", torch),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune native (CPU, f32)", native),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune native (CPU, f32), layers recomputed (`--recompute`)",
         r["native-smollm2-recompute"]),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune native (CPU), base in f16 (`--base-f16`)",
         r["native-smollm2-f16"]),
        ("SmolLM2-135M, r=8 q,v, 4x128",
         "webtune native (CPU), layers recomputed, base in f16 (`--recompute --base-f16`)",
         r["native-smollm2-recompute-f16"]),
        ("SmolLM2-135M, r=8 q,v, 4x128",
         "webtune native (CPU), base in f16, 16-bit integer products (`--base-f16 --int16`)",
         r["native-smollm2-int16"]),
        ("SmolLM2-135M, r=8 q,v, 4x128",
         "webtune native (CPU), layers recomputed, base in f16, 16-bit integer products "
         "(`--recompute --base-f16 --int16`)",
         r["native-smollm2-recompute-int16"]),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune page, wasm CPU, the page's defaults",
         r["browser-cpu-smollm2"]),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune page, wasm CPU", r["browser-cpu-smollm2-1t"]),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune page, wasm CPU, \"Save memory\"",
         r["browser-cpu-smollm2-recompute"]),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune page, wasm CPU", r["browser-cpu-smollm2-f32"]),
        ("SmolLM2-135M, r=8 q,v, 4x128", "webtune page, wasm CPU, \"Save memory\"",
         r["browser-cpu-smollm2-recompute-f32"]),
        ("tiny (2 layers, d 32)", "webtune native (CPU)", r["native-tiny"]),
        ("tiny (2 layers, d 32)", "webtune page, wasm CPU", r["browser-cpu-tiny"]),
        ("tiny (2 layers, d 32)", "webtune page, WebGPU", r["browser-webgpu-tiny"]),
        ("Qwen2.5-0.5B-shaped (Q8_0), r=8 q,v, 4x128",
         "webtune native (CPU), layers recomputed, base in f16 (`--recompute --base-f16`)",
         r["native-qwen05-recompute-f16"]),
        ("Qwen2.5-0.5B-shaped (Q8_0), r=8 q,v, 4x128", "webtune native (CPU, f32)", r["native-qwen05"]),
        ("Qwen2.5-1.5B-shaped (Q8_0), r=8 q,v, 4x128",
         "webtune native (CPU), layers recomputed, base in f16 (`--recompute --base-f16`)",
         r["native-qwen15-recompute-f16"]),
        ("Qwen2.5-0.5B-shaped (Q8_0), r=8 q,v, 4x128", "webtune page, wasm CPU, \"Save memory\"",
         r["browser-cpu-qwen05-recompute"]),
        ("Qwen2.5-1.5B-shaped (Q8_0), r=8 q,v, 4x128", "webtune page, wasm CPU, \"Save memory\"",
         r["browser-cpu-qwen15-recompute"]),
    ]
    for workload, where, x in rows:
        if x is None:
            continue
        if x.get("refused"):
            print(f"| {workload} | {where} | refused before loading: {x['refused']} | – | – | – | – | – |")
            continue
        vs = None
        if torch and "SmolLM2" in workload:
            vs = x["train_tokens_per_sec"] / torch["train_tokens_per_sec"]
        mem = None
        if x.get("load_peak_mb") is not None:
            mem = f"{x['load_peak_mb']:,.0f} / {x['train_peak_mb']:,.0f}"
            if x.get("train_estimate_mb") is not None:
                mem += f" (est. {x['load_estimate_mb']:,.0f} / {x['train_estimate_mb']:,.0f})"
        elif x.get("memory_mb"):
            mem = f"– / {x['memory_mb']:,.0f} (wasm memory)"
            if x.get("estimate_mb") is not None:
                mem += f" (est. {x['estimate_mb']:,.0f})"
        where_text = where
        if "base_f16" in x and "backend_status" in x and "SmolLM2" in workload:  # the page: as it loaded
            where_text += ", 16-bit weights" if x["base_f16"] else ", 32-bit weights"
        if "backend_status" in x:
            where_text += f" ({x['backend_status'].split(':')[0].strip().rstrip('.')})"
        # A GPU reads the loss back every few steps: its figure is a mean (bench.mjs says why).
        step = fmt(x['median_step_secs'], 3)
        if x.get("step_statistic") == "mean":
            step += " (mean)"
        print(f"| {workload} | {where_text} | {fmt(x['train_tokens_per_sec'])} | "
              f"{step} | {'–' if vs is None else f'{vs:.2f}x'} | "
              f"{mem or '–'} | {fmt(x.get('eval_secs'), 2)} | {fmt(x.get('first_step_secs'), 1)} |")
    print()
    ratios = []
    for name, label in (("browser-cpu-smollm2", ", its defaults"), ("browser-cpu-smollm2-f32", "")):
        if native and r[name]:  # the target: >= 0.5x
            bits = "16" if r[name].get("base_f16") else "32"
            ratios.append(f"browser CPU / native CPU f32 (SmolLM2; the page with {bits}-bit weights{label}): "
                          f"{r[name]['train_tokens_per_sec'] / native['train_tokens_per_sec']:.2f}x")
    if r["native-tiny"] and r["browser-cpu-tiny"]:
        ratios.append(f"browser CPU / native CPU (tiny): "
                      f"{r['browser-cpu-tiny']['train_tokens_per_sec'] / r['native-tiny']['train_tokens_per_sec']:.2f}x")
    if r["browser-cpu-tiny"] and r["browser-webgpu-tiny"]:
        ratios.append(f"browser WebGPU / browser CPU (tiny): "
                      f"{r['browser-webgpu-tiny']['train_tokens_per_sec'] / r['browser-cpu-tiny']['train_tokens_per_sec']:.2f}x")
    if native and native.get("base_parameters"):
        # Peak memory (VmHWM, MiB) against the base model's f32 size.
        base_mib = native["base_parameters"] * 4 / 2**20
        for name, label in (("native-smollm2", "native"), ("native-smollm2-recompute", "native, layers recomputed"),
                            ("native-smollm2-f16", "native, base in f16"),
                            ("native-smollm2-recompute-f16", "native, layers recomputed, base in f16"),
                            ("native-smollm2-int16", "native, base in f16, 16-bit integer products"),
                            ("native-smollm2-recompute-int16",
                             "native, layers recomputed, base in f16, 16-bit integer products"),
                            ("browser-cpu-smollm2", "page (its defaults), wasm memory"),
                            ("browser-cpu-smollm2-recompute", "page with \"Save memory\", wasm memory"),
                            ("browser-cpu-smollm2-f32", "page with 32-bit weights, wasm memory"),
                            ("browser-cpu-smollm2-recompute-f32",
                             "page with \"Save memory\" and 32-bit weights, wasm memory")):
            x = r[name]
            peak = x and (x.get("train_peak_mb") or x.get("memory_mb"))
            if peak:
                ratios.append(f"peak memory / the f32 base ({base_mib:,.0f} MB), {label}: {peak / base_mib:.2f}x")
    for name, label in (("native-smollm2", "f32"), ("native-smollm2-int16", "base in f16")):
        x = r[name]
        if x and x.get("generate_base_tokens_per_sec"):
            ratios.append(f"generation, native CPU (SmolLM2, {label}, greedy, KV cache): "
                          f"{x['generate_base_tokens_per_sec']:.1f} tokens/s base, "
                          f"{x['generate_adapted_tokens_per_sec']:.1f} adapted")
    for name, label in (("browser-cpu-smollm2", "its defaults"), ("browser-cpu-smollm2-f32", "32-bit weights")):
        x = r[name]
        if x and x.get("sample_secs") is not None:
            ratios.append(f"the page's sample after training (its prompt, up to 40 tokens, greedy; {label}): "
                          f"{x['sample_secs']:.1f} s")
    if native and r["browser-cpu-smollm2"]:
        # The page's default run: 100 steps of this workload plus its evaluations.
        step = r["browser-cpu-smollm2"]["median_step_secs"]
        ratios.append(f"the page's default run (100 steps, 4x128) on the wasm CPU backend: "
                      f"~{100 * step / 60:.0f} min of training")
    for build, s in (r["shipped"] or {}).items():
        br = f", {s['brotli'] / 1e6:.2f} MB as served (brotli)" if s.get("brotli") else ""
        if s.get("brotli"):  # the target for what the page downloads
            br += " (within the 3 MB target)" if s["brotli"] <= 3e6 else " (**over the 3 MB target**)"
        ratios.append(f"shipped with `web/{build}` (wasm + JS + HTML + CSS): {s['raw'] / 1e6:.2f} MB raw, "
                      f"{s['gzip'] / 1e6:.2f} MB gzip{br}")
    for line in ratios:
        print(f"- {line}")


if __name__ == "__main__":
    main()
