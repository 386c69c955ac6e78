#!/usr/bin/env python3
"""The reference column of the benchmark: the same LoRA training workload as `webtune bench`, in
PyTorch + PEFT on the same machine. Prints one JSON object (the fields `webtune bench` prints).

    python3 tests/bench/torch_lora.py --model M.gguf --data a.txt b.txt [--steps 8 --warmup 2]
        [--device cuda] [--base-dtype f16]

The model is loaded by transformers from the same GGUF file (dequantized to float32) or from a
Hugging Face folder (config.json, tokenizer.json, model.safetensors; tests/bench/gpu.sh's synthetic
SmolLM2), in float32 unless --base-dtype says otherwise (PEFT keeps the adapter in float32 then),
on the CPU or, with --device cuda, on the GPU (TF32 off: float32 products, as webtune's). LoRA r=8 /
alpha 16 / dropout 0.05 on q_proj and v_proj, AdamW (lr 5e-4, weight decay 0.01), gradient
clipping at norm 1.0, batches of 4 windows of 128 tokens: webtune's defaults.
"""
import argparse
import json
import os
import random
import statistics
import time


def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="a .gguf file")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--base-dtype", default="f32", choices=["f32", "f16", "bf16"])
    a = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cuda = a.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.base_dtype]
    started = time.perf_counter()
    if os.path.isdir(a.model):
        name = os.path.basename(os.path.normpath(a.model))
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(a.model)
    else:
        folder, name = os.path.split(os.path.abspath(a.model))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = model.to(a.device)
    if cuda:
        torch.cuda.synchronize()
    load_secs = time.perf_counter() - started
    load_peak = peak_rss_mb()
    reset_peak_rss()

    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ids = []
    for path in a.data:
        with open(path, encoding="utf-8", errors="replace") as f:
            ids += tok(f.read())["input_ids"] + [tok.eos_token_id]
    t = a.seq_len
    windows = [ids[i * t:i * t + t + 1] for i in range((len(ids) - 1) // t)]
    random.Random(0).shuffle(windows)
    need = (a.warmup + a.steps) * a.batch
    windows = (windows * (need // max(len(windows), 1) + 1))[:need]

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4,
                            weight_decay=0.01)
    model.train()
    times, losses = [], []
    for s in range(a.warmup + a.steps):
        batch = torch.tensor(windows[s * a.batch:(s + 1) * a.batch], device=a.device)
        if cuda:
            torch.cuda.synchronize()
            if s == a.warmup:
                torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        # The loss webtune computes: every one of the seq_len inputs predicts the next token.
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    measured = times[a.warmup:]
    med = statistics.median(measured)
    print(json.dumps({
        "model": f"{name} (PyTorch {torch.__version__} + PEFT)",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "base_dtype": a.base_dtype,
        "threads": torch.get_num_threads(),
        "batch": a.batch, "seq_len": a.seq_len, "rank": a.rank,
        "trainable_parameters": trainable,
        "load_secs": load_secs, "load_peak_mb": load_peak, "train_peak_mb": peak_rss_mb(),
        "warmup_step_secs": times[:a.warmup], "step_secs": measured,
        "median_step_secs": med, "train_tokens_per_sec": a.batch * a.seq_len / med,
        "first_loss": losses[0], "last_loss": losses[-1],
        "train_peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }))


if __name__ == "__main__":
    main()
