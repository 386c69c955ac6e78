#!/usr/bin/env bash
# gemm's wasm f32 matmul (gemm-f32 0.19, as burn's CPU backend runs it in the page) against
# webtune's 16-bit integer product (crate/core/src/kernels/int16.rs), one thread in headless
# Chromium.
# Needs tests/setup.sh (the e2e tests' playwright-core and Chromium). Prints GFLOP/s per shape.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}/wasm-gemm-bench"
out="$target/out"
mkdir -p "$out"
build() {
  RUSTFLAGS="-C target-feature=+simd128" cargo build --quiet --release \
    --target wasm32-unknown-unknown --manifest-path "$here/Cargo.toml" --target-dir "$target/$1" "${@:2}"
  cp "$target/$1/wasm32-unknown-unknown/release/wasm_gemm_bench.wasm" "$out/$1.wasm"
}
build gemm
cd "$out"
node "$here/run.mjs" gemm.wasm gemm.wasm:run_int16 "${1:-3}"
