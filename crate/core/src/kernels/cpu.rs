//! The fused kernels on plain row-major `f32` slices: one pass over memory where burn's generic
//! ops (and their autodiff) make five to ten, each into a fresh tensor. Rows run in parallel
//! natively and in the page's multi-threaded build ([`for_rows`]).
//!
//! Every function documents its layout; shapes come from the callers (`ops.rs`).

use crate::rng::mix_index;

/// Rows of `row_len` in `out`, each computed by `f(row_index, row)`, in parallel where possible.
/// `cost` is the number of elements computing one row reads.
pub fn for_rows(
    out: &mut [f32],
    row_len: usize,
    cost: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if row_len == 0 {
        return;
    }
    // The page's one-thread build has no pool. Its multi-threaded build (`threads`) splits the
    // rows over the pool as natively does: measured in the page, see README, "Speed".
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    let _ = cost;
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        use rayon::prelude::*;
        // Small tensors are not worth waking the pool for.
        if out.len() > row_len && (out.len() / row_len) * cost >= 1 << 15 {
            out.par_chunks_mut(row_len)
                .enumerate()
                .for_each(|(i, row)| f(i, row));
            return;
        }
    }
    for (i, row) in out.chunks_mut(row_len).enumerate() {
        f(i, row);
    }
}

/// e^x for `f32`, branch-free so that loops over it vectorize (glibc's `expf` is a scalar call
/// with an error path for underflow, which masked attention scores hit constantly). Cephes'
/// method: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial; relative error below 2e-7
/// where the result is a normal f32. Below e^-87 (the smallest normals) it returns 0; above 88.3
/// it saturates at about 2.1e38 (never inf).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.3);
    // Round to nearest by adding and subtracting 1.5 * 2^23: plain float adds, which vectorize on
    // every target (`round` is a library call on wasm and on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n is in [-126, 128) after the clamp.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { er * two_n }
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// y = x / rms(x) * gamma, per row of `d`; also returns 1/rms per row.
///
/// x, y: `[rows, d]`; gamma: `[d]`; rstd: `[rows]`.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, y: &mut [f32]) {
    let d = gamma.len();
    for_rows(y, d, d, |i, yr| {
        let xr = &x[i * d..(i + 1) * d];
        let rstd = inv_rms(xr, eps);
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(gamma) {
            *o = v * rstd * g;
        }
    });
}

fn inv_rms(xr: &[f32], eps: f32) -> f32 {
    let ss: f32 = xr.iter().map(|v| v * v).sum();
    1.0 / (ss / xr.len() as f32 + eps).sqrt()
}

/// dx of [`rms_norm`]: with n = x * rstd, dx = rstd * (g*dy - n * mean(g*dy*n)).
pub fn rms_norm_backward(x: &[f32], gamma: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let d = gamma.len();
    for_rows(dx, d, d, |i, dxr| {
        let xr = &x[i * d..(i + 1) * d];
        let dyr = &dy[i * d..(i + 1) * d];
        let rstd = inv_rms(xr, eps);
        let dot: f32 = xr
            .iter()
            .zip(dyr)
            .zip(gamma)
            .map(|((&v, &g_), &g)| g_ * g * v * rstd)
            .sum();
        let mean = dot / d as f32;
        for (((o, &v), &g_), &g) in dxr.iter_mut().zip(xr).zip(dyr).zip(gamma) {
            *o = rstd * (g * g_ - v * rstd * mean);
        }
    });
}

/// d gamma of [`rms_norm`]: sum over rows of dy * x * rstd. `[d]`.
pub fn rms_norm_backward_gamma(x: &[f32], d: usize, eps: f32, dy: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; d];
    for (xr, dyr) in x.chunks(d).zip(dy.chunks(d)) {
        let rstd = inv_rms(xr, eps);
        for ((o, &v), &g_) in out.iter_mut().zip(xr).zip(dyr) {
            *o += g_ * v * rstd;
        }
    }
    out
}

/// y = silu(g) * u, elementwise (SwiGLU's gate).
pub fn silu_mul(g: &[f32], u: &[f32], y: &mut [f32], row_len: usize) {
    for_rows(y, row_len, row_len, |i, yr| {
        let s = i * row_len;
        for ((o, &a), &b) in yr.iter_mut().zip(&g[s..]).zip(&u[s..]) {
            *o = a * sigmoid(a) * b;
        }
    });
}

/// Gradients of [`silu_mul`]: dg = dy * u * s * (1 + g (1 - s)), du = dy * g * s, s = sigmoid(g).
/// `out` holds dg then du (each `g.len()` long).
pub fn silu_mul_backward(g: &[f32], u: &[f32], dy: &[f32], out: &mut [f32], row_len: usize) {
    let n = g.len();
    let (dg, du) = out.split_at_mut(n);
    for_rows(dg, row_len, row_len, |i, dgr| {
        let s0 = i * row_len;
        for (k, o) in dgr.iter_mut().enumerate() {
            let (a, b, d) = (g[s0 + k], u[s0 + k], dy[s0 + k]);
            let s = sigmoid(a);
            *o = d * b * s * (1.0 + a * (1.0 - s));
        }
    });
    for_rows(du, row_len, row_len, |i, dur| {
        let s0 = i * row_len;
        for (k, o) in dur.iter_mut().enumerate() {
            let a = g[s0 + k];
            *o = dy[s0 + k] * a * sigmoid(a);
        }
    });
}

/// Dropout: `y = x / keep` where element i's draw keeps it, else 0. The draw is a hash of
/// (`seed`, i) ([`mix_index`]), so the mask needs no generator state, splits over rows
/// in parallel, and is drawn again, identical, by the backward pass from the same seed.
/// Rows are `row_len` long.
pub fn dropout(x: &[f32], keep: f32, seed: u64, y: &mut [f32], row_len: usize) {
    // keep in 32-bit fixed point: element kept when its 32-bit draw is below it.
    let threshold = (f64::from(keep) * 4_294_967_296.0).min(4_294_967_295.0) as u64;
    let scale = 1.0 / keep;
    for_rows(y, row_len, row_len, |i, yr| {
        let s0 = i * row_len;
        for (k, (o, &v)) in yr.iter_mut().zip(&x[s0..]).enumerate() {
            let draw = mix_index(seed, (s0 + k) as u64) >> 32;
            *o = if draw < threshold { v * scale } else { 0.0 };
        }
    });
}

/// Rotary embedding (transformers' `rotate_half` pairing (i, i + d/2)) fused with the move to
/// the head-major layout attention wants.
///
/// x: `[batch * seq, heads * head_dim]` (a projection's output, token rows);
/// cos, sin: `[seq, head_dim]`; y: `[batch, heads, seq, head_dim]`.
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], [b, t, h, hd]: [usize; 4], y: &mut [f32]) {
    let half = hd / 2;
    for_rows(y, t * hd, t * hd, |bh, block| {
        let (bi, hi) = (bh / h, bh % h);
        for ti in 0..t {
            let src = &x[(bi * t + ti) * h * hd + hi * hd..][..hd];
            let (c, s) = (&cos[ti * hd..][..hd], &sin[ti * hd..][..hd]);
            let dst = &mut block[ti * hd..][..hd];
            for k in 0..half {
                dst[k] = src[k] * c[k] - src[k + half] * s[k];
                dst[k + half] = src[k + half] * c[k + half] + src[k] * s[k + half];
            }
        }
    });
    let _ = b;
}

/// dx of [`rope`]: dy `[batch, heads, seq, head_dim]` -> dx `[batch * seq, heads * head_dim]`.
pub fn rope_backward(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    [b, t, h, hd]: [usize; 4],
    dx: &mut [f32],
) {
    let half = hd / 2;
    for_rows(dx, h * hd, h * hd, |row, out| {
        let (bi, ti) = (row / t, row % t);
        let (c, s) = (&cos[ti * hd..][..hd], &sin[ti * hd..][..hd]);
        for hi in 0..h {
            let g = &dy[((bi * h + hi) * t + ti) * hd..][..hd];
            let o = &mut out[hi * hd..][..hd];
            for k in 0..half {
                o[k] = g[k] * c[k] + g[k + half] * s[k + half];
                o[k + half] = g[k + half] * c[k + half] - g[k] * s[k];
            }
        }
    });
    let _ = b;
}

/// Causal softmax of attention scores, scaled: p = softmax(scale * s) over each row, where row r
/// of a block is query position `start + r % seq` and may see keys 0..=start + r % seq; later keys
/// get probability 0 without being exponentiated. Several query heads that share a key head
/// are stacked in one block (rows `g * seq + i`), hence the modulo.
///
/// s, p: `[blocks, rows, keys]`.
pub fn causal_softmax(s: &[f32], keys: usize, seq: usize, start: usize, scale: f32, p: &mut [f32]) {
    for_rows(p, keys, keys, |r, pr| {
        let sr = &s[r * keys..(r + 1) * keys];
        // Row r of any block is query r % seq: blocks hold whole multiples of seq rows.
        let visible = (start + r % seq.max(1) + 1).min(keys);
        let max = sr[..visible]
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for (o, &v) in pr[..visible].iter_mut().zip(&sr[..visible]) {
            let e = exp((v - max) * scale);
            *o = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        for o in &mut pr[..visible] {
            *o *= inv;
        }
        pr[visible..].fill(0.0);
    });
}

/// ds of [`causal_softmax`]: scale * p * (dp - sum(dp * p)) per row (0 where p is masked).
pub fn causal_softmax_backward(p: &[f32], dp: &[f32], keys: usize, scale: f32, ds: &mut [f32]) {
    for_rows(ds, keys, keys, |r, dr| {
        let pr = &p[r * keys..(r + 1) * keys];
        let gr = &dp[r * keys..(r + 1) * keys];
        let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for ((o, &pv), &gv) in dr.iter_mut().zip(pr).zip(gr) {
            *o = scale * pv * (gv - dot);
        }
    });
}

/// log(sum(exp(row))) per row of `[rows, vocab]`.
pub fn log_sum_exp(x: &[f32], vocab: usize, out: &mut [f32]) {
    for_rows(out, 1, vocab, |i, o| {
        let row = &x[i * vocab..(i + 1) * vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f32 = row.iter().map(|&v| exp(v - max)).sum();
        o[0] = max + sum.ln();
    });
}

/// Mean over rows of lse - x[target]: the cross-entropy of `[rows, vocab]` logits.
pub fn cross_entropy(x: &[f32], vocab: usize, targets: &[usize], lse: &[f32]) -> f32 {
    let total: f64 = targets
        .iter()
        .enumerate()
        .map(|(i, &t)| f64::from(lse[i] - x[i * vocab + t]))
        .sum();
    (total / targets.len().max(1) as f64) as f32
}

/// d logits of the mean cross-entropy, times the upstream gradient `g`:
/// (softmax(x) - onehot(target)) * g / rows.
pub fn cross_entropy_backward(
    x: &[f32],
    vocab: usize,
    targets: &[usize],
    lse: &[f32],
    g: f32,
    dx: &mut [f32],
) {
    dx.copy_from_slice(x);
    let scale = g / targets.len().max(1) as f32;
    cross_entropy_grad_in_place(dx, vocab, targets, lse, scale);
}

/// In place, row by row: logits `[rows, vocab]` become (softmax(x) - onehot(target)) * scale,
/// given each row's log-sum-exp: d loss / d logits of a mean cross-entropy when `scale` is the
/// upstream gradient over the mean's row count (a block of a larger batch: the batch's).
pub fn cross_entropy_grad_in_place(
    x: &mut [f32],
    vocab: usize,
    targets: &[usize],
    lse: &[f32],
    scale: f32,
) {
    for_rows(x, vocab, vocab, |i, row| {
        let l = lse[i];
        for v in row.iter_mut() {
            *v = exp(*v - l) * scale;
        }
        row[targets[i]] -= scale;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_2e_7_relative() {
        let mut worst = 0.0f64;
        let mut x = -86.9f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp(-1.0e9), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(100.0).is_finite());
    }
}
