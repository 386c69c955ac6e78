#!/usr/bin/env bash
# Builds the page's two wasm modules and their JS glue (git-ignored), and precompresses them:
#   web/pkg/          WebGPU + the CPU backend on one thread (stable Rust, wasm SIMD)
#   web/pkg-threads/  the CPU backend on all cores: rayon on Web Workers (nightly Rust with wasm
#                     atomics: the standard library is rebuilt with them, -Z build-std)
# worker.js loads pkg-threads when the page runs on the CPU and the browser allows threads
# (cross-origin isolated), else pkg. `--only gpu|threads` builds one of them; `--npm` (below)
# packages the first for npm.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webtune/target}"
ONLY="${2:-}"
[ "${1:-}" = "--only" ] || ONLY=""
# `--npm`: the JS API as an npm package in web/npm/ (git-ignored): the WebGPU build (web/pkg,
# built first) with crate/wasm/npm's package.json and README.md. `npm pack web/npm` makes the
# tarball; tests/e2e/npm-example imports it.
NPM=""
if [ "${1:-}" = "--npm" ]; then NPM=1; ONLY=gpu; fi

# The multi-threaded build's flags: wasm atomics and SIMD; the linker arguments make the memory
# shared and imported (so workers can share it), up to 4 GiB (the wasm32 limit), and export the
# thread-local storage symbols wasm-bindgen's thread start-up calls (this nightly does not add
# them for wasm32-unknown-unknown by itself). `--threads-rustflags` prints them (tests/run.sh).
threads_rustflags() {
  local flags="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128"
  for a in --shared-memory --import-memory --max-memory=4294967296 --export=__wasm_init_tls \
           --export=__tls_size --export=__tls_align --export=__tls_base; do
    flags="$flags -C link-arg=$a"
  done
  echo "$flags"
}
if [ "${1:-}" = "--threads-rustflags" ]; then threads_rustflags; exit 0; fi

# The WebGPU build's dependencies for size at opt-level "z" instead of Cargo.toml's "s" (the CPU
# backend's crates stay at 3): the GPU runtime's host code is most of this wasm, and "z" takes 3%
# off what the page downloads (README, "Speed"). Only this build: the threaded CPU build and
# native code keep "s". `--gpu-config` prints it: tests/run.sh builds the browser tests with it,
# so that they and this build share their dependencies (one wasm32 build of burn, not two).
GPU_CONFIG='profile.release.package."*".opt-level="z"'
if [ "${1:-}" = "--gpu-config" ]; then echo "$GPU_CONFIG"; exit 0; fi

pack() { # out-dir, then extra cargo args
  local out=$1; shift
  wasm-pack build crate/wasm --target web --release --out-dir "../../web/$out" --out-name webtune \
    --no-pack -- --no-default-features "$@"
  # shellcheck disable=SC2046 # file names without spaces (wasm-pack's and wasm-bindgen's)
  compress $(find "web/$out" -name '*.wasm' -o -name '*.js')
}

# Served precompressed (serve.py): brotli where the browser takes it (the WebGPU build's wasm
# 23 MB -> 3.0 MB; gzip gives 5.1 MB), else gzip. Brotli at its best and slowest setting (~1 min
# for that wasm) with its largest standard window (16 MB), which browsers decode; node has brotli.
compress() {
  # wasm-pack rewrites its output on every build, the same bytes when nothing changed (the bench
  # builds the page again after tests/run.sh did): a file whose .gz still holds its bytes keeps
  # its copies, made fresh again for serve.py; the others lose their .br first, so an
  # interrupted run cannot leave a stale one.
  local changed
  changed=$(python3 - "$@" <<'PY'
import gzip, os, pathlib, sys, zlib
def holds(gz, data):
    try:
        return gzip.decompress(gz.read_bytes()) == data
    except (OSError, EOFError, zlib.error):  # missing, truncated or not gzip
        return False
for f in map(pathlib.Path, sys.argv[1:]):
    data, gz, br = f.read_bytes(), f.with_name(f.name + ".gz"), f.with_name(f.name + ".br")
    if br.is_file() and holds(gz, data):
        os.utime(gz), os.utime(br)
        continue
    br.unlink(missing_ok=True)
    gz.write_bytes(gzip.compress(data, 9, mtime=0))
    print(f)
PY
  )
  [ -n "$changed" ] || return 0
  # shellcheck disable=SC2086 # one file name per line, without spaces
  node - $changed <<'JS'
const fs = require("fs"), zlib = require("zlib");
const { BROTLI_PARAM_QUALITY, BROTLI_PARAM_LGWIN, BROTLI_PARAM_SIZE_HINT } = zlib.constants;
for (const f of process.argv.slice(2)) {
  const data = fs.readFileSync(f);
  const params = { [BROTLI_PARAM_QUALITY]: 11, [BROTLI_PARAM_LGWIN]: 24, [BROTLI_PARAM_SIZE_HINT]: data.length };
  fs.writeFileSync(f + ".br", zlib.brotliCompressSync(data, { params }));
}
JS
}

if [ "$ONLY" != threads ]; then
  pack pkg --features gpu --config "$GPU_CONFIG"
fi
if [ "$ONLY" != gpu ]; then
  # A separate build folder: other flags and another compiler would otherwise rebuild each other.
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR-wasm-threads" RUSTUP_TOOLCHAIN=nightly \
  RUSTFLAGS="$(threads_rustflags)" \
    pack pkg-threads --features threads -Z build-std=panic_abort,std
fi
# The page's own files (copies ignored by git; serve.py skips a copy older than its file).
compress web/*.js web/*.html web/*.css
if [ -n "$NPM" ]; then
  rm -rf web/npm
  mkdir -p web/npm
  cp web/pkg/webtune.js web/pkg/webtune.d.ts web/pkg/webtune_bg.wasm web/pkg/webtune_bg.wasm.d.ts \
    crate/wasm/npm/package.json crate/wasm/npm/README.md web/npm/
fi
