#!/usr/bin/env bash
# Clippy while building: set as RUSTC_WORKSPACE_WRAPPER (tests/run.sh), cargo runs this for the
# workspace's own crates with the compiler's path first. The compiler's own toolchain's
# clippy-driver compiles them as rustc would and lints them on the way (what `cargo clippy` does,
# with `cargo check` in place of a real build), so CI's builds of the tests and the page are also
# its clippy runs: the dependencies are built once, not also checked. The stable builds and the
# nightly threads build each get their own toolchain's clippy. Lint flags: CLIPPY_ARGS.
rustc=$1
case $rustc in */*) ;; *) rustc=$(command -v "$rustc") ;; esac
exec "$(dirname "$rustc")/clippy-driver" "$@"
