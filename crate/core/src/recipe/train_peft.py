#!/usr/bin/env python3
"""A webtune run, taken further with PyTorch + transformers + PEFT: on the CPU, one GPU, or many.

    pip install torch transformers peft accelerate
    python train_peft.py                          # here: the CPU, or the GPU if there is one
    accelerate launch train_peft.py               # every GPU of this machine (data parallel)
    accelerate launch --config_file ds.yaml train_peft.py   # a cluster: DeepSpeed or FSDP, as
                                                  # `accelerate config` writes it

It reads, beside it:
- run.json: the webtune run's settings, whole (LoRA, optimizer and schedule, batches, steps);
- train.jsonl and val.jsonl: the training and validation windows exactly as webtune made them
  (its chat template, the prompts' tokens labelled -100 so that the loss learns the answers);
- adapter/: the adapter to continue (webtune's PEFT export), if there is one.
It writes out/: the adapter, as PEFT saves it (`PeftModel.from_pretrained` and webtune read it).

Flags: --steps N (instead of run.json's), --base ID_OR_FOLDER (instead of BASE below),
--out DIR, --eval-only (print the validation loss and stop).
"""
import argparse
import json
import math
import os

# The base model, as webtune named it: a Hugging Face id (or folder) transformers loads.
BASE = "@BASE@"

HERE = os.path.dirname(os.path.abspath(__file__))


def read_windows(name):
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def lr_lambda(spec):
    """webtune's schedule (RunSpec::lr_at): linear warmup, then cosine decay to lr * min_lr_ratio."""
    steps, optim = spec["train"]["steps"], spec["optim"]
    warmup = optim["warmup_steps"] if optim["warmup_steps"] is not None else steps // 10
    ratio = optim["min_lr_ratio"]

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int)
    p.add_argument("--base", default=BASE)
    p.add_argument("--out", default=os.path.join(HERE, "out"))
    p.add_argument("--eval-only", action="store_true")
    a = p.parse_args()

    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    with open(os.path.join(HERE, "run.json")) as f:
        spec = json.load(f)
    if a.steps is not None:
        spec["train"]["steps"] = a.steps
    train, val = read_windows("train.jsonl"), read_windows("val.jsonl")
    t, o, lora = spec["train"], spec["optim"], spec["lora"]
    torch.manual_seed(t["seed"])
    accelerator = Accelerator(gradient_accumulation_steps=t["grad_accum"])

    model = AutoModelForCausalLM.from_pretrained(a.base, torch_dtype=torch.float32)
    adapter = os.path.join(HERE, "adapter")
    if os.path.exists(os.path.join(adapter, "adapter_config.json")):
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:
        targets = lora["targets"] or None  # None: PEFT's defaults for the family, as webtune's
        if targets == ["all-linear"]:
            targets = "all-linear"
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=targets,
                use_rslora=lora["use_rslora"],
                task_type="CAUSAL_LM",
            ),
        )

    def batch(windows):
        ids = torch.tensor([w["input_ids"] for w in windows])
        return ids, torch.tensor([w["labels"] for w in windows])

    def evaluate():
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(val), t["batch_size"]):
                ids, labels = batch(val[i : i + t["batch_size"]])
                ids, labels = ids.to(accelerator.device), labels.to(accelerator.device)
                n = int((labels[:, 1:] != -100).sum())
                if n:
                    total += model(input_ids=ids, labels=labels).loss.item() * n
                    count += n
        model.train()
        return total / count if count else None

    if a.eval_only:
        model = accelerator.prepare(model)
        print(json.dumps({"val_loss": evaluate()}))
        return

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=o["lr"], betas=(o["adam_beta1"], o["adam_beta2"]), eps=o["adam_epsilon"],
        weight_decay=o["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec))
    loader = torch.utils.data.DataLoader(
        train, batch_size=t["batch_size"], shuffle=True, collate_fn=batch,
        generator=torch.Generator().manual_seed(t["seed"]), drop_last=len(train) >= t["batch_size"],
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    step, micro = 0, 0
    if accelerator.is_main_process:
        print(json.dumps({"step": 0, "val_loss": evaluate()}), flush=True)
    while step < t["steps"]:
        for ids, labels in loader:
            with accelerator.accumulate(model):
                loss = model(input_ids=ids, labels=labels).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and o["max_grad_norm"] is not None:
                    accelerator.clip_grad_norm_(trainable, o["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro += 1
            if micro % t["grad_accum"]:
                continue
            step += 1
            line = {"step": step, "train_loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
            every = t["eval_every"]
            if step == t["steps"] or (every and step % every == 0):
                line["val_loss"] = evaluate()
            if accelerator.is_main_process:
                print(json.dumps(line), flush=True)
            if step >= t["steps"]:
                break
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(a.out)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
