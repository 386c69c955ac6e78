#!/usr/bin/env bash
# Fills corpus/<target>/ with valid inputs from the test fixtures, for the fuzzers to mutate.
set -euo pipefail
cd "$(dirname "$0")"
F=../../tests/fixtures
mkdir -p corpus/{gguf,gguf_use,safetensors,peft_adapter,hf_config,tokenizer_json,text,checkpoint}
cp "$F/tiny-llama-q.gguf" "$F/tiny-gpt2-q.gguf" corpus/gguf/
cp "$F/tiny-llama-q.gguf" "$F/tiny-gpt2-q.gguf" corpus/gguf_use/
i=0; for f in "$F"/*/model*.safetensors "$F"/peft/*/adapter_model.safetensors "$F"/*.golden.safetensors; do
  cp "$f" "corpus/safetensors/seed$((i++)).safetensors"; done
for d in "$F"/peft/*-adapter; do
  { cat "$d/adapter_config.json"; printf '\0'; cat "$d/adapter_model.safetensors"; } > "corpus/peft_adapter/$(basename "$d")"; done
i=0; for f in "$F"/*/config.json; do cp "$f" "corpus/hf_config/seed$((i++)).json"; done
python3 - <<'PY'
import json
vocab = {chr(0x21 + i): i for i in range(94)}
json.dump({"version": "1.0", "added_tokens": [{"id": 94, "content": "<|im_start|>", "single_word": False,
           "lstrip": False, "rstrip": False, "normalized": False, "special": True}], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "vocab": vocab, "merges": ["! \"", "# $"]}},
          open("corpus/tokenizer_json/bytelevel.json", "w"))
PY
printf 'the cat sat on the mat.\nAnd the dog, too: ½ 日本語\n' > corpus/text/plain.txt
printf '\xef\xbb\xbfwith a BOM\r\nand CRLF\r\n' > corpus/text/bom.txt
# A checkpoint: two steps of the tiny model, paused.
tmp=$(mktemp -d)
printf 'the cat sat on the mat and the dog sat on the log. %.0s' {1..20} > "$tmp/a.txt"
cargo run -q --manifest-path ../cli/Cargo.toml --bin webtune -- train --model "$F/tiny-llama-q.gguf" \
  --data "$tmp/a.txt" --out "$tmp/out" --steps 4 --seq-len 16 --pause-after 2 >/dev/null 2>&1
cp "$tmp/out/checkpoint.safetensors" corpus/checkpoint/
rm -rf "$tmp"
echo "corpus/: $(find corpus -type f | wc -l) seeds"
