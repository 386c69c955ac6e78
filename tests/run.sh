#!/usr/bin/env bash
# The test command: sets up what is missing (tests/setup.sh), then runs every check CI runs:
# formatting, clippy on native and wasm32, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# One shared build folder outside the clone, so warm runs are quick.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash tests/setup.sh --browser

echo "== cargo fmt, and prettier for web/"
cargo fmt --all -- --check
tests/e2e/node_modules/.bin/prettier --check --ignore-path web/.prettierignore web

# Native: the core and the CLI (the workspace's default members), with the GPU (wgpu) code;
# wasm32: the core and the binding.
echo "== clippy (native)"
cargo clippy --all-targets --locked --features webtune-cli/gpu -- -D warnings

echo "== clippy (wasm32: the WebGPU build and the multi-threaded CPU build)"
cargo clippy -p webtune -p webtune-wasm --lib --tests --locked --features webtune-wasm/gpu \
  --target wasm32-unknown-unknown -- -D warnings
# The threads build needs nightly's std rebuilt with atomics, in its own build folder (web/build.sh).
CARGO_TARGET_DIR="$CARGO_TARGET_DIR-wasm-threads" RUSTFLAGS="$(bash web/build.sh --threads-rustflags)" \
  cargo +nightly clippy -p webtune -p webtune-wasm --lib --locked --features webtune-wasm/threads \
  --target wasm32-unknown-unknown -Z build-std=panic_abort,std -- -D warnings

# With the GPU code, as clippy checked it: one build of the tests, whose GPU tests (the composed
# ops against PEFT, the f16 base's f16 products; `gpu` in their names) run natively on Mesa's
# lavapipe (tests/setup.sh). The CPU tests name their device: the feature changes nothing there.
# (Mesa warns at every device it opens without a runtime folder, as in CI's shell: one given.)
echo "== tests (native, and the GPU tests on lavapipe)"
XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}" cargo test --locked --features webtune-cli/gpu

echo "== browser tests (wasm-pack, headless Chromium: WebGPU on SwiftShader and the CPU backend)"
# With the WebGPU build's profile (web/build.sh --gpu-config): the page's build below then reuses
# these dependencies instead of building burn for wasm32 once more (a cold run: ~12 min).
CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=900 \
  wasm-pack test --headless --chrome --release crate/wasm --features gpu \
  --config "$(bash web/build.sh --gpu-config)"

echo "== the page, end to end (playwright-core): both wasm builds"
bash web/build.sh
# The page's JavaScript type-checked (JSDoc, protocol.js's messages, the wasm builds' .d.ts).
tests/e2e/node_modules/.bin/tsc -p web
# The JS API as an npm package (web/npm), and an example app type-checked against its types.
bash web/build.sh --npm
tests/e2e/node_modules/.bin/tsc -p tests/e2e/npm-example
(cd tests/e2e && node --test page.test.mjs durable.test.mjs runs.test.mjs hub.test.mjs static.test.mjs \
  npm.test.mjs limits.test.mjs)

echo "== bench smoke (tiny model, a few steps; the full bench is tests/bench/run.sh)"
bash tests/bench/run.sh --quick
