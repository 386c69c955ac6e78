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

# Clippy runs inside the builds below (tests/clippy-wrapper.sh): the native tests' build (the core
# and the CLI with the GPU code, every target), the browser tests' build (the core and the binding
# for wasm32 with WebGPU) and the page's threads build (nightly, wasm32 atomics). Any lint fails
# the build it is in.
export RUSTC_WORKSPACE_WRAPPER="$PWD/tests/clippy-wrapper.sh"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

# With the GPU code: one build of the tests (and clippy's native run), whose GPU tests (the composed
# ops against PEFT, the f16 base's f16 products; `gpu` in their names) run natively on Mesa's
# lavapipe (tests/setup.sh). The CPU tests name their device: the feature changes nothing there.
# (Mesa warns at every device it opens without a runtime folder, as in CI's shell: one given.)
echo "== clippy and tests (native, and the GPU tests on lavapipe)"
XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}" cargo test --locked --features webtune-cli/gpu

echo "== clippy (wasm32) and browser tests (wasm-pack, headless Chromium: WebGPU on SwiftShader and the CPU backend)"
# With the WebGPU build's profile (web/build.sh --gpu-config): the page's build below then reuses
# these dependencies instead of building burn for wasm32 once more (a cold run: ~12 min).
CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=900 \
  wasm-pack test --headless --chrome --release crate/wasm --features gpu \
  --config "$(bash web/build.sh --gpu-config)"

echo "== the page, end to end (playwright-core): both wasm builds (clippy on the threads build)"
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
