//! The multi-threaded build's guard against V8 undoing its threads.
//!
//! gemm hands every parallel matmul to rayon through one `&dyn Fn(usize)` call site (gemm-common's
//! `par_for_each`). When V8 re-tiers that rayon loop, it speculatively inlines the one closure its
//! feedback has seen (f32's), and from then on the page's SmolLM2 steps take twice as long
//! (profiled, and isolated with V8's `--no-wasm-inlining-call-indirect`: README, "Speed").
//! V8 inlines a `call_indirect` only while it has seen at most four targets there, so before
//! training the pool runs a few small products of other element types through the same call
//! site: its feedback becomes megamorphic, and V8 leaves the call alone.

use gemm::{Parallelism, c32, c64, f16, gemm};

/// Runs gemm in parallel once for each of f64, c32, c64 and f16 (and f32), each with two shapes
/// (gemm's closures differ with whether it packs the left-hand side): ~10 distinct targets at
/// the call site. Small products (256³ at most), once per session.
pub fn warm_gemm_call_site() {
    product::<f32>(0.0, 1.0);
    product::<f64>(0.0, 1.0);
    product::<c32>(c32::new(0.0, 0.0), c32::new(1.0, 0.0));
    product::<c64>(c64::new(0.0, 0.0), c64::new(1.0, 0.0));
    product::<f16>(f16::ZERO, f16::ONE);
}

fn product<T: Copy + 'static>(zero: T, one: T) {
    // Large enough for gemm to split the work over the pool (its threshold is 48 x 48 x 256).
    for (m, n, k) in [(256, 256, 256), (16, 512, 512)] {
        let lhs = vec![one; m * k];
        let rhs = vec![one; k * n];
        let mut dst = vec![zero; m * n];
        // SAFETY: row-major m x k, k x n and m x n buffers of exactly those sizes, with the
        // strides given; nothing else touches them.
        unsafe {
            gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                1,
                n as isize,
                zero,
                one,
                false,
                false,
                false,
                Parallelism::Rayon(0),
            );
        }
    }
}
