#!/usr/bin/env python3
"""Writes a GGUF model with a real model's shapes and made-up weights, for the bench's rows of
models bigger than the default (their real files are not here, and a step's time and memory do
not depend on the weights' values, only on their shapes and on them staying finite):

    python3 tests/bench/shaped_model.py SHAPE TOKENIZER.gguf OUT.gguf [--type q8_0|f16]

SHAPE: qwen2.5-0.5b or qwen2.5-1.5b (Qwen2.5-*-Instruct's config.json: sizes, grouped-query
heads, q/k/v biases, tied embeddings). The tokenizer is TOKENIZER.gguf's (the default model's:
49,152 tokens, fewer than the embedding's rows, which only the vocabulary's size reaches). The
matrices are drawn from N(0, 0.02), norms are ones, biases zeros; quantized by the `gguf`
package as llama.cpp does. Losses of such a model mean nothing; its speed and memory do.
"""
import sys

import numpy as np
import gguf

SHAPES = {
    # Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-1.5B-Instruct, config.json.
    "qwen2.5-0.5b": dict(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936),
    "qwen2.5-1.5b": dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=151936),
}


def main():
    args = sys.argv[1:]
    qtype = "q8_0"
    if "--type" in args:
        i = args.index("--type")
        qtype = args[i + 1]
        del args[i:i + 2]
    name, tok_path, out = args
    s = SHAPES[name]
    kind = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "f16": gguf.GGMLQuantizationType.F16}[qtype]
    rng = np.random.default_rng(0)
    h, head_dim = s["hidden"], s["hidden"] // s["heads"]
    kv = s["kv_heads"] * head_dim

    w = gguf.GGUFWriter(out, "qwen2")
    w.add_name(f"{name} (shapes only)")
    w.add_context_length(32768)
    w.add_embedding_length(h)
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["intermediate"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    # The tokenizer, as the default model's file has it.
    tok = gguf.GGUFReader(tok_path)
    for key, field in tok.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                items = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                items = [int(field.parts[i][0]) for i in field.data]
            w.add_array(key, items)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_string(key, bytes(field.parts[field.data[0]]).decode("utf-8"))
        elif vtype == gguf.GGUFValueType.BOOL:
            w.add_bool(key, bool(field.parts[field.data[0]][0]))
        else:
            w.add_uint32(key, int(field.parts[field.data[0]][0]))

    def matrix(tensor, rows, cols):
        data = rng.normal(0.0, 0.02, size=(rows, cols)).astype(np.float32)
        if kind == gguf.GGMLQuantizationType.F16:
            w.add_tensor(tensor, data.astype(np.float16))
        else:
            q = gguf.quants.quantize(data, kind)
            w.add_tensor(tensor, q, raw_shape=q.shape, raw_dtype=kind)

    def vector(tensor, n, value):
        w.add_tensor(tensor, np.full(n, value, dtype=np.float32))

    matrix("token_embd.weight", s["vocab"], h)
    for i in range(s["layers"]):
        b = f"blk.{i}"
        vector(f"{b}.attn_norm.weight", h, 1.0)
        matrix(f"{b}.attn_q.weight", h, h)
        vector(f"{b}.attn_q.bias", h, 0.0)
        matrix(f"{b}.attn_k.weight", kv, h)
        vector(f"{b}.attn_k.bias", kv, 0.0)
        matrix(f"{b}.attn_v.weight", kv, h)
        vector(f"{b}.attn_v.bias", kv, 0.0)
        matrix(f"{b}.attn_output.weight", h, h)
        vector(f"{b}.ffn_norm.weight", h, 1.0)
        matrix(f"{b}.ffn_gate.weight", s["intermediate"], h)
        matrix(f"{b}.ffn_up.weight", s["intermediate"], h)
        matrix(f"{b}.ffn_down.weight", h, s["intermediate"])
    vector("output_norm.weight", h, 1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
