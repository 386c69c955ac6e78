//! The webtune command line: the same core as the page, for people, tests and benchmarks.
//! Native only; on wasm32 (where `wasm-pack test` builds every target) it is an empty program.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
