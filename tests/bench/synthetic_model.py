#!/usr/bin/env python3
"""Writes a model with a real model's shapes and made-up weights, for timing where the real file
cannot go (the GPU machine takes 64 MiB with a command; SmolLM2's GGUF is 98 MB).

    python3 tests/bench/synthetic_model.py KIT_MODEL_DIR OUT_DIR

KIT_MODEL_DIR holds the real model's config.json and tokenizer files and shapes.json (every
tensor's Hugging Face name and shape, as `tests/bench/gpu.sh --prepare` reads them from a real
export); OUT_DIR gets those files and a model.safetensors of the same tensors in f16. A step's time
does not depend on the weights' values, only on their shapes (and on them staying finite: matrices
are drawn from N(0, 0.02), the norms' weights are ones), so the bench times this model as it would
the real one; its losses mean nothing. Python's standard library only (the GPU machine reaches no
package registry).
"""
import json
import math
import os
import random
import shutil
import struct
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(src, "shapes.json")) as f:
        shapes = json.load(f)
    for name in os.listdir(src):
        if name.endswith(".json") and name != "shapes.json":
            shutil.copy(os.path.join(src, name), os.path.join(out, name))

    # One block of values, repeated: the weights' values do not change a step's time.
    rng = random.Random(0)
    block_len = 1 << 20
    block = struct.pack(f"<{block_len}e", *(rng.gauss(0.0, 0.02) for _ in range(block_len)))
    ones = struct.pack("<e", 1.0)

    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = sizes[name]
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    header["__metadata__"] = {"format": "pt", "note": "synthetic weights (tests/bench/synthetic_model.py)"}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)

    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, shape in shapes.items():
            n = sizes[name]
            if len(shape) == 1:  # norms (and biases): ones keep the activations' scale
                f.write(ones * n)
                continue
            left = 2 * n
            while left > 0:
                chunk = block[: min(left, len(block))]
                f.write(chunk)
                left -= len(chunk)
    print(f"{out}/model.safetensors: {len(shapes)} tensors, {offset / 2**20:.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
