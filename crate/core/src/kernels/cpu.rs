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
    if worth_splitting(out.len(), row_len, cost) {
        for_chunks(out, row_len, f);
    } else {
        for (i, row) in out.chunks_mut(row_len).enumerate() {
            f(i, row);
        }
    }
}

/// `f(first_row, rows, block)` over `out` (rows of `row_len`) cut into blocks of `block_rows`
/// rows (the last one shorter), on the pool where there is one: for work so large per row (a
/// matrix product's) that a block of rows is the unit worth a task. `out` may end inside its
/// last row (a slice of a wider matrix's columns that starts inside its first row).
pub fn for_row_blocks(
    out: &mut [f32],
    row_len: usize,
    block_rows: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) {
    if row_len == 0 || block_rows == 0 {
        return;
    }
    for_chunks(out, row_len * block_rows, |i, c| {
        f(i * block_rows, c.len().div_ceil(row_len), c)
    });
}

/// `f(i, chunk)` over `out` cut into chunks of `len` (the last one shorter), on the pool where
/// there is one and there is more than one chunk.
pub fn for_chunks<T: Send>(out: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if len == 0 {
        return;
    }
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        use rayon::prelude::*;
        if out.len() > len {
            out.par_chunks_mut(len)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
    }
    for (i, c) in out.chunks_mut(len).enumerate() {
        f(i, c);
    }
}

/// Whether rows of `row_len` in `len` values, each reading `cost` elements, are worth splitting
/// over the pool: more than one row, and enough work that waking the pool pays.
fn worth_splitting(len: usize, row_len: usize, cost: usize) -> bool {
    len > row_len && (len / row_len) * cost >= 1 << 15
}

/// [`for_rows`] over two outputs of one shape, row `i` of each filled by one call
/// `f(i, a_row, b_row)`.
pub fn for_rows2(
    a: &mut [f32],
    b: &mut [f32],
    row_len: usize,
    cost: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    if row_len == 0 {
        return;
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    let _ = cost;
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        use rayon::prelude::*;
        if worth_splitting(a.len(), row_len, cost) {
            a.par_chunks_mut(row_len)
                .zip(b.par_chunks_mut(row_len))
                .enumerate()
                .for_each(|(i, (ra, rb))| f(i, ra, rb));
            return;
        }
    }
    for (i, (ra, rb)) in a.chunks_mut(row_len).zip(b.chunks_mut(row_len)).enumerate() {
        f(i, ra, rb);
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
    let k = xc * LOG2E + ROUND;
    let n = k - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n is in [-126, 128) after the clamp. k = 1.5 * 2^23 + n holds
    // n in its low mantissa bits (k's bits are 0x4B40_0000 + n), and 0x4B40_0000 << 23 wraps to
    // 0, so (k's bits + 127) << 23 is n + 127 in the exponent field. Integer lane ops, where
    // `n as i32` (Rust's saturating cast) is scalar code on baseline x86-64.
    let two_n = f32::from_bits(k.to_bits().wrapping_add(127) << 23);
    if x < -87.0 { 0.0 } else { er * two_n }
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Partial sums a reduction keeps. One running f32 sum is a serial chain the compiler may not
/// reorder (that would change the result), so the whole loop around it, [`exp`] included, stays
/// scalar; [`LANES`] independent sums let it run in SIMD registers (four 4-lane vectors in wasm
/// and on baseline x86-64).
const LANES: usize = 16;

/// The sum of `f(a[i], b[i], c[i])` over slices of one length, in [`LANES`] partial sums.
#[inline(always)]
fn sum_zip3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (ac, at) = a[..n].as_chunks::<LANES>();
    let (bc, bt) = b[..n].as_chunks::<LANES>();
    let (cc, ct) = c[..n].as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for ((ca, cb), ck) in ac.iter().zip(bc).zip(cc) {
        for j in 0..LANES {
            acc[j] += f(ca[j], cb[j], ck[j]);
        }
    }
    let tail: f32 = at
        .iter()
        .zip(bt)
        .zip(ct)
        .map(|((&x, &y), &z)| f(x, y, z))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The sum of `f(a[i], b[i])`, in [`LANES`] partial sums.
#[inline(always)]
fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    sum_zip3(a, b, a, |x, y, _| f(x, y))
}

/// The largest element (-inf for none), in [`LANES`] partial maxima: `f32::max` folded over a
/// slice is a serial chain in wasm, whose `f32.max` treats NaN otherwise than Rust's `max`.
/// NaN is not propagated (the callers' rows are finite; a NaN loss is caught by the trainer).
#[inline(always)]
fn max_lanes(a: &[f32]) -> f32 {
    let (chunks, tail) = a.as_chunks::<LANES>();
    let mut acc = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The sum of `f(a[i])`, in [`LANES`] partial sums.
#[inline(always)]
fn sum_map(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum_zip3(a, a, a, |x, _, _| f(x))
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
    let ss = sum_map(xr, |v| v * v);
    1.0 / (ss / xr.len() as f32 + eps).sqrt()
}

/// dx of [`rms_norm`]: with n = x * rstd, dx = rstd * (g*dy - n * mean(g*dy*n)).
pub fn rms_norm_backward(x: &[f32], gamma: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let d = gamma.len();
    for_rows(dx, d, d, |i, dxr| {
        let xr = &x[i * d..(i + 1) * d];
        let dyr = &dy[i * d..(i + 1) * d];
        let rstd = inv_rms(xr, eps);
        let dot = sum_zip3(xr, dyr, gamma, |v, g_, g| g_ * g * v * rstd);
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
    // One pass for both: sigmoid (an exp and a division) once per element.
    for_rows2(dg, du, row_len, row_len, |i, dgr, dur| {
        let s0 = i * row_len;
        let inputs = g[s0..].iter().zip(&u[s0..]).zip(&dy[s0..]);
        for ((og, ou), ((&a, &b), &d)) in dgr.iter_mut().zip(dur.iter_mut()).zip(inputs) {
            let s = sigmoid(a);
            *og = d * b * s * (1.0 + a * (1.0 - s));
            *ou = d * a * s;
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
        let max = max_lanes(&sr[..visible]);
        for (o, &v) in pr[..visible].iter_mut().zip(&sr[..visible]) {
            *o = exp((v - max) * scale);
        }
        let inv = 1.0 / sum_map(&pr[..visible], |e| e);
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
        let dot = sum_zip(pr, gr, |a, b| a * b);
        for ((o, &pv), &gv) in dr.iter_mut().zip(pr).zip(gr) {
            *o = scale * pv * (gv - dot);
        }
    });
}

/// log(sum(exp(row))) per row of `[rows, vocab]`.
pub fn log_sum_exp(x: &[f32], vocab: usize, out: &mut [f32]) {
    for_rows(out, 1, vocab, |i, o| {
        let row = &x[i * vocab..(i + 1) * vocab];
        let max = max_lanes(row);
        let sum = sum_map(row, |v| exp(v - max));
        o[0] = max + sum.ln();
    });
}

/// A row whose target is this is left out of the loss (it adds 0, and gets no gradient), and
/// still counts in the mean's rows: [`super::IGNORED_TARGET`] as the kernels read it.
pub const IGNORED: usize = usize::MAX;

/// Mean over rows of lse - x[target]: the cross-entropy of `[rows, vocab]` logits (rows whose
/// target is [`IGNORED`] add 0).
pub fn cross_entropy(x: &[f32], vocab: usize, targets: &[usize], lse: &[f32]) -> f32 {
    let total: f64 = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| **t != IGNORED)
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
        if targets[i] == IGNORED {
            row.fill(0.0);
            return;
        }
        let l = lse[i];
        for v in row.iter_mut() {
            *v = exp(*v - l) * scale;
        }
        row[targets[i]] -= scale;
    });
}

/// IEEE half-precision bits to f32, exactly (every f16 value is an f32 value; NaNs stay NaN).
///
/// Branch-free, so that a loop over a slice vectorizes (wasm's SIMD has no f16 conversion, and
/// `half`'s portable path branches per element): the 15 exponent and mantissa bits move up 13
/// places and the exponent is rebiased (127 - 15); infinity and NaN get the rest of the f32
/// exponent range; subnormals (and zero) are a multiply by 2^-24 of their mantissa, an integer.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let bits = h & 0x7fff;
    let exponent = bits & 0x7c00;
    let normal = f32::from_bits((bits << 13) + ((127 - 15) << 23));
    let inf_nan = f32::from_bits((bits << 13) | 0x7f80_0000);
    let subnormal = (bits & 0x03ff) as f32 * (1.0 / 16_777_216.0);
    let magnitude = if exponent == 0x7c00 {
        inf_nan
    } else if exponent == 0 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// [`f16_to_f32`] over a slice, in parallel where threads exist.
pub fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    const CHUNK: usize = 1 << 14;
    let widen = |i: usize, out: &mut [f32]| {
        let src = &src[i * CHUNK..i * CHUNK + out.len()];
        for (o, h) in out.iter_mut().zip(src) {
            *o = f16_to_f32(h.to_bits());
        }
    };
    for_rows(dst, CHUNK, CHUNK, widen);
}

/// An f16 matrix `[rows, cols]` as its bits in `bits`: element (r, c) at
/// `start + r * row_stride + c * col_stride`, one of the strides 1.
#[derive(Debug, Clone, Copy)]
pub struct F16View<'a> {
    pub bits: &'a [u16],
    pub start: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Multiply-adds from which [`f16_few_rows`] splits its work over the pool (an LM head's).
/// Splitting from 2^16 (every projection) measured the same natively (23-25 against 24-26
/// tokens/s generated, SmolLM2) and in the page (2.8-3.5 s against 3.0-3.2 s for its sample).
const FEW_ROWS_ON_THE_POOL: usize = 1 << 22;

/// x `[m, d]` (row-major f32) · wᵀ for an f16 w `[n, d]` -> out `[m, n]`, for a few rows of x
/// (a generated token's): w is read once, widened a piece at a time into a buffer of a few KB,
/// where widening it whole into f32 for gemm would write its size twice over and read it back
/// for a product of one row. Each w row contiguous (`col_stride` 1, the LM head): tasks of 64
/// rows, a dot product of each with each row of x; each column contiguous (a Linear weight
/// `[d, n]` seen transposed): tasks of 512 columns, for each k a run of as many values (1 KB,
/// read in order) added into each row's sums.
pub fn f16_few_rows(x: &[f32], m: usize, w: F16View, out: &mut [f32]) {
    let (n, d) = (w.rows, w.cols);
    if d == 0 {
        // No products to sum (and no rows of x to cut).
        out[..m * n].fill(0.0);
        return;
    }
    if n == 0 || m == 0 {
        return;
    }
    let width = if w.col_stride == 1 { 64 } else { 512 }.min(n);
    let blocks = n.div_ceil(width);
    // Per block of columns of out, its [m, width] sums (the pool's tasks write apart), then
    // copied into out's rows.
    let mut parts = vec![0f32; blocks * m * width];
    let block = |b: usize, part: &mut [f32]| {
        let c0 = b * width;
        let len = width.min(n - c0);
        let mut buf = vec![0f32; d.max(len)];
        let widen = |from: usize, out: &mut [f32]| widen_run(&w.bits[from..from + out.len()], out);
        if w.col_stride == 1 {
            for j in 0..len {
                widen(w.start + (c0 + j) * w.row_stride, &mut buf[..d]);
                for (i, xi) in x.chunks_exact(d).take(m).enumerate() {
                    part[i * width + j] = dot(xi, &buf[..d]);
                }
            }
        } else {
            // One of the strides is 1: here the row stride.
            for k in 0..d {
                widen(w.start + k * w.col_stride + c0, &mut buf[..len]);
                for i in 0..m {
                    let xi = x[i * d + k];
                    for (s, &v) in part[i * width..i * width + len].iter_mut().zip(&buf[..len]) {
                        *s += xi * v;
                    }
                }
            }
        }
    };
    // On the pool only when the product is large (an LM head's): a generated token runs a few
    // hundred of these, and waking the pool for each costs more than a projection's product
    // (in wasm, where the pool's threads wait on `Atomics.wait`, several times more).
    if m * n * d >= FEW_ROWS_ON_THE_POOL {
        for_chunks(&mut parts, m * width, block);
    } else {
        for (b, part) in parts.chunks_mut(m * width).enumerate() {
            block(b, part);
        }
    }
    for (b, part) in parts.chunks_exact(m * width).enumerate() {
        let c0 = b * width;
        let len = width.min(n - c0);
        for i in 0..m {
            out[i * n + c0..i * n + c0 + len].copy_from_slice(&part[i * width..i * width + len]);
        }
    }
}

/// f16 values (their bits) widened into `out` (as long as `src`): 8 at a time with F16C where
/// the CPU has it or with wasm's SIMD, else [`f16_to_f32`] on each.
fn widen_run(src: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has F16C (checked; AVX comes with it).
        return unsafe { widen_run_f16c(src, out) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return widen_run_simd128(src, out);
    #[allow(unreachable_code)]
    for (o, &h) in out.iter_mut().zip(src) {
        *o = f16_to_f32(h);
    }
}

/// [`widen_run`] in wasm: 8 values at a time, each as `int16::f16_to_f32` widens it (its bits
/// moved into f32's places, times 2^112: exact for every finite f16, subnormals too), with the
/// sign in the same moves: sign-extended and shifted, the f16's bits land in f32's sign and
/// 15 bits below its top 4, and a mask clears the 3 copies of the sign between them. A run with
/// an infinity or NaN (its largest magnitude, kept on the way) is widened again by
/// [`f16_to_f32`], which keeps those.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn widen_run_simd128(src: &[u16], out: &mut [f32]) {
    use core::arch::wasm32::*;
    let rebias = f32x4_splat(f32::from_bits((127 + 112) << 23));
    let keep = i32x4_splat(0x8fff_e000_u32 as i32);
    let (s8, mut o8) = (src.chunks_exact(8), out.chunks_exact_mut(8));
    let done = src.len() - s8.remainder().len();
    // Twice each magnitude (the sign shifted out), the largest so far.
    let mut largest = u16x8_splat(0);
    for (s, o) in s8.zip(&mut o8) {
        // SAFETY: 8 u16 in, 8 f32 out (exact chunks); any alignment.
        unsafe {
            let v = v128_load(s.as_ptr() as *const v128);
            largest = u16x8_max(largest, i16x8_shl(v, 1));
            let wide = |x: v128| f32x4_mul(v128_and(i32x4_shl(x, 13), keep), rebias);
            v128_store(o.as_mut_ptr() as *mut v128, wide(i32x4_extend_low_i16x8(v)));
            v128_store(
                o.as_mut_ptr().add(4) as *mut v128,
                wide(i32x4_extend_high_i16x8(v)),
            );
        }
    }
    if v128_any_true(u16x8_ge(largest, u16x8_splat(0x7c00 << 1))) {
        for (o, &h) in out[..done].iter_mut().zip(src) {
            *o = f16_to_f32(h);
        }
    }
    for (o, &h) in out[done..].iter_mut().zip(&src[done..]) {
        *o = f16_to_f32(h);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn widen_run_f16c(src: &[u16], out: &mut [f32]) {
    use core::arch::x86_64::*;
    let (s8, mut o8) = (src.chunks_exact(8), out.chunks_exact_mut(8));
    let done = src.len() - s8.remainder().len();
    for (s, o) in s8.zip(&mut o8) {
        // SAFETY: 8 u16 in, 8 f32 out (exact chunks); any alignment.
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr() as *const __m128i);
            _mm256_storeu_ps(o.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for (o, &h) in out[done..].iter_mut().zip(&src[done..]) {
        *o = f16_to_f32(h);
    }
}

/// Σ a[i] · b[i] in 8 interleaved sums (which the compiler keeps in vector registers).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few rows times an f16 matrix read in place, its rows contiguous (an LM head) or its
    /// columns (a Linear weight seen transposed), with an offset and sizes that leave a partial
    /// block of columns: the f64 products of the widened values, to f32's rounding of the sums.
    #[test]
    fn few_rows_times_an_f16_matrix_are_its_products() {
        let (n, d, start) = (1100, 37, 5);
        let vals = |len: usize, seed: u64| -> Vec<f32> {
            let mut s = seed;
            (0..len)
                .map(|_| {
                    s = crate::rng::mix64(s.wrapping_add(crate::rng::GOLDEN_GAMMA));
                    (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
                })
                .collect()
        };
        let w: Vec<f32> = vals(n * d, 1)
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        let bits = |order: &dyn Fn(usize) -> usize| -> Vec<u16> {
            let mut b = vec![0x7e00u16; start + n * d]; // NaN where nothing should be read
            for i in 0..n * d {
                b[start + order(i)] = half::f16::from_f32(w[i]).to_bits();
            }
            b
        };
        // w [n, d] row-major, and its transpose [d, n] row-major (element (r, c) at c·n + r).
        let rows_major = bits(&|i| i);
        let cols_major = bits(&|i| (i % d) * n + i / d);
        // No columns to sum over: zeros.
        let mut out = vec![f32::NAN; 2 * 3];
        let empty = F16View {
            bits: &[],
            start: 0,
            rows: 3,
            cols: 0,
            row_stride: 0,
            col_stride: 1,
        };
        f16_few_rows(&[], 2, empty, &mut out);
        assert_eq!(out, [0.0; 6]);
        for m in [1, 3, 15] {
            let x = vals(m * d, 2 + m as u64);
            for (bits, row_stride, col_stride) in [(&rows_major, d, 1), (&cols_major, 1, n)] {
                let view = F16View {
                    bits,
                    start,
                    rows: n,
                    cols: d,
                    row_stride,
                    col_stride,
                };
                let mut out = vec![f32::NAN; m * n];
                f16_few_rows(&x, m, view, &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let (want, size) = (0..d).fold((0f64, 0f64), |(s, a), k| {
                            let p = x[i * d + k] as f64 * w[j * d + k] as f64;
                            (s + p, a + p.abs())
                        });
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= size * d as f64 * 1.2e-7,
                            "m {m}, col stride {col_stride}: [{i}, {j}] {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f16_widening_matches_half_for_every_bit_pattern() {
        let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
        let mut wide = vec![0.0f32; all.len()];
        widen_f16(&all, &mut wide);
        for (&h, &got) in all.iter().zip(&wide) {
            let want = h.to_f32();
            let h = h.to_bits();
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}: {got} is not NaN");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}: {got} vs {want}");
            }
        }
    }

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

    #[test]
    fn lane_sums_match_a_sum_in_f64_for_every_tail_length() {
        // Lengths around and between multiples of LANES: the chunked part and the tail.
        for n in 0..(3 * LANES + 2) {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
            let c: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
            let want: f64 = (0..n)
                .map(|i| f64::from(a[i]) * f64::from(b[i]) * f64::from(c[i]))
                .sum();
            let got = sum_zip3(&a, &b, &c, |x, y, z| x * y * z);
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "n {n}: {got} vs {want}"
            );
            let want: f64 = a.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            assert!(
                (f64::from(sum_map(&a, |x| x * x)) - want).abs() < 1e-5,
                "n {n}"
            );
        }
    }
}
