//! Two exported functions for `run.mjs` to time in the browser, each multiplying two matrices
//! `iters` times on one thread: `run` with gemm in f32, `run_int16` with webtune's 16-bit
//! integer product (`crate/core/src/kernels/int16.rs`, compiled in from its source).

#[path = "../../../../crate/core/src/kernels/int16.rs"]
mod int16;

/// `c[m, n] = a[m, k] · b`, where `b` is `[k, n]` row-major, or `[n, k]` row-major (that is,
/// transposed: how a linear layer's weight is stored) when `b_transposed` is 1. Returns the sum
/// of `c`, so the work cannot be optimized away.
#[unsafe(no_mangle)]
pub extern "C" fn run(m: usize, n: usize, k: usize, iters: usize, b_transposed: u32) -> f32 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let (b_cs, b_rs) = if b_transposed == 1 {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    for _ in 0..iters {
        // SAFETY: the strides describe the three buffers above, each exactly as long as its shape.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    c.iter().sum()
}

/// `run`'s product with [`int16::matmul`]: b quantized and packed once (as the frozen base's
/// weights would be), a quantized on every product.
#[unsafe(no_mangle)]
pub extern "C" fn run_int16(m: usize, n: usize, k: usize, iters: usize, b_transposed: u32) -> f32 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    // b as the weight it stands for: `[n, k]` for a forward product (transposed), `[k, n]` for
    // a backward one.
    let (packed, scale) = if b_transposed == 1 {
        int16::PackedB::pack(n, k, true, |r, out| out.copy_from_slice(&b[r * k..(r + 1) * k]))
    } else {
        int16::PackedB::pack(k, n, false, |r, out| out.copy_from_slice(&b[r * n..(r + 1) * n]))
    };
    let mut c = vec![0f32; m * n];
    for _ in 0..iters {
        let lhs = int16::Lhs { data: &a, stride: k, scale: &scale };
        int16::matmul(&lhs, &packed, 0..m, &mut c, n, false);
    }
    c.iter().sum()
}
