//! The webtune command line: the same core as the page, for people, tests and benchmarks.
//! Native only; on wasm32 (where `wasm-pack test` builds every target) it is an empty program.

#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod cli;
// `--model org/name`: models fetched from the Hugging Face hub.
#[cfg(not(target_arch = "wasm32"))]
mod hub;
#[cfg(not(target_arch = "wasm32"))]
mod report;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    keep_freed_memory();
    cli::main()
}

/// glibc hands large freed blocks back to the kernel (mmap/trim), so every training step
/// page-faults and zeroes its activations again: 20% of a SmolLM2 step went to the kernel. Keeping
/// freed memory in the heap for reuse made steps ~1.35x faster (README, "Speed"); the peak stays
/// the same.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

#[cfg(target_arch = "wasm32")]
fn main() {}
