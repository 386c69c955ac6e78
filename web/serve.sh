#!/usr/bin/env bash
# The run command: installs what is missing, fetches the default model, builds the wasm and
# serves the page on http://127.0.0.1:${WEBTUNE_PORT:-8080}/ . Extra arguments go to serve.py
# (e.g. --port 9000, --allow-model-origin https://example.org).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}"
bash tests/setup.sh
bash web/build.sh
exec python3 web/serve.py "$@"
