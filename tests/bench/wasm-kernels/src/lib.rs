//! `run(kernel, reps)` runs one of webtune's fused CPU kernels `reps` times on SmolLM2-sized
//! inputs (4 x 128 tokens) for run.mjs to time. run.sh copies the kernels in as src/cpu_old.rs
//! (a git revision's) and src/cpu_new.rs (the working tree's), and rng.rs beside them.
#![allow(dead_code)]
#[cfg(not(feature = "new"))]
#[path = "cpu_old.rs"]
mod cpu;
#[cfg(feature = "new")]
#[path = "cpu_new.rs"]
mod cpu;
#[path = "rng.rs"]
mod rng;
use std::hint::black_box;

/// Values in [-4, 4), reproducible.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = rng::mix64(s.wrapping_add(rng::GOLDEN_GAMMA));
            (s >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        })
        .collect()
}

// SmolLM2-135M at 4 x 128 tokens: hidden 576, MLP 1536, 9 query heads, vocabulary 49,152 (the
// LM head's loss runs 256 rows at a time: 64 rows here).
const TOKENS: usize = 512;
const HIDDEN: usize = 576;
const MLP: usize = 1536;
const VOCAB: usize = 49_152;
const ROWS: usize = 64;
const SEQ: usize = 128;
const HEADS: usize = 4 * 9;

#[unsafe(no_mangle)]
pub extern "C" fn run(kernel: u32, reps: u32) -> f32 {
    let mut acc = 0.0f32;
    match kernel {
        0 => {
            let x = data(ROWS * VOCAB, 1);
            let mut o = vec![0.0; ROWS];
            for _ in 0..reps {
                cpu::log_sum_exp(black_box(&x), VOCAB, &mut o);
                acc += o[3];
            }
        }
        1 => {
            let mut x = data(ROWS * VOCAB, 1);
            let lse = vec![12.0; ROWS];
            let t: Vec<usize> = (0..ROWS).collect();
            for _ in 0..reps {
                cpu::cross_entropy_grad_in_place(black_box(&mut x), VOCAB, &t, &lse, 1e-3);
                acc += x[5];
            }
        }
        2 => {
            let (g, u) = (data(TOKENS * MLP, 2), data(TOKENS * MLP, 3));
            let mut y = vec![0.0; TOKENS * MLP];
            for _ in 0..reps {
                cpu::silu_mul(black_box(&g), &u, &mut y, MLP);
                acc += y[7];
            }
        }
        3 => {
            let (g, u, dy) = (
                data(TOKENS * MLP, 2),
                data(TOKENS * MLP, 3),
                data(TOKENS * MLP, 4),
            );
            let mut o = vec![0.0; 2 * TOKENS * MLP];
            for _ in 0..reps {
                cpu::silu_mul_backward(black_box(&g), &u, &dy, &mut o, MLP);
                acc += o[7];
            }
        }
        4 => {
            let s = data(HEADS * SEQ * SEQ, 5);
            let mut p = vec![0.0; HEADS * SEQ * SEQ];
            for _ in 0..reps {
                cpu::causal_softmax(black_box(&s), SEQ, SEQ, 0, 0.125, &mut p);
                acc += p[130];
            }
        }
        5 => {
            let (p, dp) = (data(HEADS * SEQ * SEQ, 5), data(HEADS * SEQ * SEQ, 6));
            let mut ds = vec![0.0; HEADS * SEQ * SEQ];
            for _ in 0..reps {
                cpu::causal_softmax_backward(black_box(&p), &dp, SEQ, 0.125, &mut ds);
                acc += ds[130];
            }
        }
        6 => {
            let (x, g) = (data(TOKENS * HIDDEN, 7), data(HIDDEN, 8));
            let mut y = vec![0.0; TOKENS * HIDDEN];
            for _ in 0..reps {
                cpu::rms_norm(black_box(&x), &g, 1e-5, &mut y);
                acc += y[9];
            }
        }
        7 => {
            let (x, g, dy) = (
                data(TOKENS * HIDDEN, 7),
                data(HIDDEN, 8),
                data(TOKENS * HIDDEN, 9),
            );
            let mut dx = vec![0.0; TOKENS * HIDDEN];
            for _ in 0..reps {
                cpu::rms_norm_backward(black_box(&x), &g, 1e-5, &dy, &mut dx);
                acc += dx[9];
            }
        }
        8 => {
            // A generated token (one row) by one layer's projections, their weights in f16 seen
            // transposed as the model's Linear layers hold them ([d_in, d_out]).
            let shapes = [
                (HIDDEN, HIDDEN),
                (HIDDEN, 192),
                (HIDDEN, 192),
                (HIDDEN, HIDDEN),
                (HIDDEN, MLP),
                (HIDDEN, MLP),
                (MLP, HIDDEN),
            ];
            let weights: Vec<Vec<u16>> = shapes
                .iter()
                .enumerate()
                .map(|(i, &(d, n))| f16_bits(d * n, 10 + i as u64))
                .collect();
            let x = data(MLP, 20);
            let mut o = vec![0.0; MLP];
            for _ in 0..reps {
                for (&(d, n), w) in shapes.iter().zip(&weights) {
                    let view = cpu::F16View {
                        bits: w,
                        start: 0,
                        rows: n,
                        cols: d,
                        row_stride: 1,
                        col_stride: n,
                    };
                    cpu::f16_few_rows(black_box(&x[..d]), 1, view, &mut o[..n]);
                    acc += o[7];
                }
            }
        }
        9 => {
            // The same by one 576 x 576 projection (its 648 KB in the core's L2) 7 times.
            let w = f16_bits(HIDDEN * HIDDEN, 10);
            let x = data(HIDDEN, 20);
            let mut o = vec![0.0; HIDDEN];
            let view = cpu::F16View {
                bits: &w,
                start: 0,
                rows: HIDDEN,
                cols: HIDDEN,
                row_stride: 1,
                col_stride: HIDDEN,
            };
            for _ in 0..reps * 7 {
                cpu::f16_few_rows(black_box(&x), 1, view, &mut o);
                acc += o[7];
            }
        }
        _ => {}
    }
    acc
}

/// Finite f16 values (their bits), reproducible: any sign, exponent and mantissa but the
/// infinities' and NaN's exponent.
fn f16_bits(n: usize, seed: u64) -> Vec<u16> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = rng::mix64(s.wrapping_add(rng::GOLDEN_GAMMA));
            let h = (s >> 48) as u16;
            if h & 0x7c00 == 0x7c00 { h ^ 0x4000 } else { h }
        })
        .collect()
}
