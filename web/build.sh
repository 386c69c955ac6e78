#!/usr/bin/env bash
# Builds the wasm module and its JS glue into web/pkg (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}"
wasm-pack build crate --target web --release --out-dir ../web/pkg --out-name webtune --no-typescript --no-pack -- --no-default-features
