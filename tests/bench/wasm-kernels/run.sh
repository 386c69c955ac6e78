#!/usr/bin/env bash
# webtune's fused CPU kernels (crate/core/src/kernels/cpu.rs) in wasm, one thread in headless
# Chromium: the file at a git revision (default HEAD) against the working tree's, alternately.
#   bash tests/bench/wasm-kernels/run.sh [REV] [rounds]
# Needs tests/setup.sh (the e2e tests' playwright-core and Chromium). Prints ms per call.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
rev="${1:-HEAD}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}/wasm-kernels-bench"
out="$target/out"
mkdir -p "$out"
git -C "$root" show "$rev:crate/core/src/kernels/cpu.rs" > "$here/src/cpu_old.rs"
cp "$root/crate/core/src/kernels/cpu.rs" "$here/src/cpu_new.rs"
cp "$root/crate/core/src/rng.rs" "$here/src/rng.rs"
build() {
  RUSTFLAGS="-C target-feature=+simd128" cargo build --quiet --release \
    --target wasm32-unknown-unknown --manifest-path "$here/Cargo.toml" --target-dir "$target" "${@:2}"
  cp "$target/wasm32-unknown-unknown/release/wasm_kernels_bench.wasm" "$out/$1.wasm"
}
build "$rev"
build working-tree --features new
cd "$out"
node "$here/run.mjs" "$rev.wasm" working-tree.wasm "${2:-3}"
