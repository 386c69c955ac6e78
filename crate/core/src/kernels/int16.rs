//! A matrix product in 16-bit integers: `c = a · b`, with `a` in f32 (quantized here, each
//! row a block of [`BLOCK`] values at a time) and `b` quantized once into [`PackedB`]. Products
//! of pairs accumulate exactly in i32 (`i32x4.dot_i16x8_s` in wasm), each block's sum is scaled
//! back into f32.
//!
//! Why: in the browser the page's CPU training is its matmuls, and wasm's 128-bit SIMD has no
//! fused multiply-add: gemm's f32 kernel does 4 multiply-adds per two instructions there and
//! runs at ~80% of that peak (README, "Speed"). One `i32x4.dot_i16x8_s` is 8 multiply-adds;
//! measured in Chromium on one thread (`tests/bench/wasm-gemm`), this product runs ~1.5x
//! gemm's f32 on the frozen base's shapes. On x86-64 the same product runs with AVX2 (and
//! AVX512-VNNI where the CPU has it), chosen at run time: `vpmaddwd` / `vpdpwssd` multiply-add 16
//! i16 pairs per instruction where an f32 FMA does 8 (module `avx2`); elsewhere the portable path
//! is a reference, not a fast path.
//!
//! Precision: values are rounded to integers of at most [`QMAX`] in magnitude, `a` per row and
//! block of [`BLOCK`] columns (an outlier costs only its block), `b` per column (per output
//! feature of a linear layer, or folded into `a` where the reduction runs over them: see
//! [`PackedB::pack`]): a relative error of at most 2^-14 of the block's or column's largest
//! value for each factor. The sums are exact: |q| <= 8191 gives a block's partial sums at most
//! 8191² · 32 < 2^31.
//!
//! # Shapes
//! - a: `[m, k]` row-major f32; b: `[k, n]` given through [`PackedB::pack`]; c: `[m, n]`

/// The largest quantized magnitude: a block's 32 products then sum below 2^31.
pub const QMAX: f32 = 8191.0;
/// Values of `a` sharing one scale, and the products summed in i32 before they go to f32.
pub const BLOCK: usize = 32;
const PAIRS: usize = BLOCK / 2;
/// The kernel's tile: `MR` rows of `a` by `NV` vectors of 4 columns of `b`. 4 x 2 keeps its 8
/// accumulators, 2 vectors of `b` and the broadcasts in V8's 15 usable registers (4 x 3 and 3 x 3
/// spill one; measured against 2 x 3, 2 x 4, 3 x 2, 4 x 3, 5 x 2, 6 x 2, 1 x 4, 2 x 5).
const MR: usize = 4;
const NV: usize = 2;
const NR: usize = NV * 4;

/// `b` `[k, n]` quantized and laid out for the kernel: panels of [`NR`] columns, in each, for
/// every pair of rows (2p, 2p + 1), the panel's columns as (b[2p, j], b[2p + 1, j]) pairs; k
/// padded with zeros to a multiple of [`BLOCK`], n to a multiple of [`NR`].
#[derive(Debug, Clone)]
pub struct PackedB {
    data: Vec<i16>,
    /// Per column: what its integers are multiplied by.
    scale: Vec<f32>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Quantizes `w` (`[rows, cols]`, row-major, read a row at a time through `row`) per row and
    /// packs it, on this thread: [`Packer`] says how, and runs the same steps a panel at a time
    /// for callers that spread them over threads.
    pub fn pack(
        rows: usize,
        cols: usize,
        transposed: bool,
        row: impl Fn(usize, &mut [f32]),
    ) -> (Self, Vec<f32>) {
        let mut w = vec![0f32; rows * cols];
        for (r, out) in w.chunks_exact_mut(cols.max(1)).enumerate() {
            row(r, out);
        }
        let scales = w.chunks_exact(cols.max(1)).map(|r| scale_of(r).0).collect();
        let packer = Packer::new(rows, cols, transposed, scales);
        let mut data = vec![0i16; packer.panels() * packer.panel_len()];
        for (p, panel) in data.chunks_mut(packer.panel_len()).enumerate() {
            packer.fill(p, panel, |r, c0, out| {
                out.copy_from_slice(&w[r * cols + c0..r * cols + c0 + out.len()])
            });
        }
        packer.finish(data)
    }

    /// `[k, n]`, as packed.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    fn pairs(&self) -> usize {
        self.k.div_ceil(BLOCK) * PAIRS
    }
}

/// How `w` (`[rows, cols]`) becomes a [`PackedB`]: as `b = w`ᵀ (`transposed`: `[cols, rows]`,
/// a linear layer's forward product x · wᵀ, each panel a run of w's rows) or as `b = w`
/// (`[rows, cols]`, its backward product dy · w, each panel a run of w's columns). Either way w
/// is quantized per row, with the scales [`scale_of`] gives its rows: with `transposed` they
/// become b's column scales; without, they lie along the sum, and [`Self::finish`] returns them
/// for the caller to fold into `a` ([`Lhs::scale`]).
pub struct Packer {
    rows: usize,
    cols: usize,
    transposed: bool,
    scales: Vec<f32>,
    inv: Vec<f32>,
    kp: usize,
}

impl Packer {
    /// `scales`: w's rows' ([`scale_of`]'s first value for each).
    pub fn new(rows: usize, cols: usize, transposed: bool, scales: Vec<f32>) -> Self {
        let k = if transposed { cols } else { rows };
        let inv = scales
            .iter()
            .map(|&s| {
                if s > 0.0 && s.is_finite() {
                    1.0 / s
                } else {
                    0.0
                }
            })
            .collect();
        Self {
            rows,
            cols,
            transposed,
            scales,
            inv,
            kp: k.div_ceil(BLOCK) * PAIRS,
        }
    }

    fn n(&self) -> usize {
        if self.transposed {
            self.rows
        } else {
            self.cols
        }
    }

    pub fn panels(&self) -> usize {
        self.n().div_ceil(NR)
    }

    /// i16 values in a panel.
    pub fn panel_len(&self) -> usize {
        self.kp * NR * 2
    }

    /// Packs panel `p` (zeroed, [`Self::panel_len`] long), reading w through
    /// `read(row, first_col, out)`: w's values `[row, first_col..first_col + out.len()]`.
    pub fn fill(&self, p: usize, panel: &mut [i16], read: impl Fn(usize, usize, &mut [f32])) {
        if self.transposed {
            // b's columns p·NR.. are w's rows: each read whole, its pairs to their column.
            let mut buf = vec![0f32; self.cols];
            for j in 0..NR.min(self.rows - p * NR) {
                let r = p * NR + j;
                read(r, 0, &mut buf);
                let inv = self.inv[r];
                for (kk, &x) in buf.iter().enumerate() {
                    panel[(kk / 2 * NR + j) * 2 + kk % 2] = quantize(x * inv);
                }
            }
        } else {
            // b's rows are w's rows; its columns p·NR.. a slice of each.
            let c0 = p * NR;
            let mut buf = [0f32; NR];
            let width = NR.min(self.cols - c0);
            for r in 0..self.rows {
                read(r, c0, &mut buf[..width]);
                let inv = self.inv[r];
                for (j, &x) in buf[..width].iter().enumerate() {
                    panel[(r / 2 * NR + j) * 2 + r % 2] = quantize(x * inv);
                }
            }
        }
    }

    /// [`Self::fill`] for an f16 w, read as its bits a whole row at a time (`row(r)`: w's row r,
    /// `cols` values): the same integers as `fill` gives for the values widened to f32 (exact),
    /// 8 at a time with wasm SIMD.
    pub fn fill_f16<'a>(&self, p: usize, panel: &mut [i16], row: impl Fn(usize) -> &'a [u16]) {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            if self.transposed {
                for j in 0..NR.min(self.rows - p * NR) {
                    let r = p * NR + j;
                    simd128::fill_column(row(r), self.inv[r], j, panel);
                }
                return;
            } else if self.cols - p * NR >= NR {
                let zeros = [0u16; NR];
                for r in (0..self.rows).step_by(2) {
                    let below = if r + 1 < self.rows {
                        &row(r + 1)[p * NR..]
                    } else {
                        &zeros
                    };
                    let inv1 = self.inv.get(r + 1).copied().unwrap_or(0.0);
                    let at = r / 2 * NR * 2;
                    let pair = [&row(r)[p * NR..p * NR + NR], &below[..NR]];
                    simd128::fill_row_pair(pair, [self.inv[r], inv1], &mut panel[at..at + NR * 2]);
                }
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            if self.transposed {
                for j in 0..NR.min(self.rows - p * NR) {
                    let r = p * NR + j;
                    // SAFETY: the CPU has AVX2 and F16C (checked).
                    unsafe { avx2::fill_column(row(r), self.inv[r], j, panel) };
                }
                return;
            } else if self.cols - p * NR >= NR {
                let zeros = [0u16; NR];
                for r in (0..self.rows).step_by(2) {
                    let below = if r + 1 < self.rows {
                        &row(r + 1)[p * NR..]
                    } else {
                        &zeros
                    };
                    let inv1 = self.inv.get(r + 1).copied().unwrap_or(0.0);
                    let at = r / 2 * NR * 2;
                    let pair = [&row(r)[p * NR..p * NR + NR], &below[..NR]];
                    let out = &mut panel[at..at + NR * 2];
                    // SAFETY: the CPU has AVX2 and F16C (checked).
                    unsafe { avx2::fill_row_pair(pair, [self.inv[r], inv1], out) };
                }
                return;
            }
        }
        self.fill(p, panel, |r, c0, out| {
            for (o, &h) in out.iter_mut().zip(&row(r)[c0..]) {
                *o = f16_to_f32(h);
            }
        });
    }

    /// The packed matrix from its filled panels, and w's row scales where they lie along the
    /// sum (without `transposed`; empty with).
    pub fn finish(self, data: Vec<i16>) -> (PackedB, Vec<f32>) {
        let panels = self.panels();
        let (k, n) = if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        if self.transposed {
            let mut scale = self.scales;
            scale.resize(panels * NR, 0.0);
            (PackedB { data, scale, k, n }, Vec::new())
        } else {
            let scale = vec![1.0; panels * NR];
            (PackedB { data, scale, k, n }, self.scales)
        }
    }
}

/// An f16 (its bits) as f32, exactly for every finite value (normal or subnormal): the bits
/// moved into f32's places and multiplied by 2^112 (f32's exponent bias less f16's). Infinity
/// and NaN come out finite: callers check for them first ([`f16_scale`]). (`cpu::f16_to_f32`
/// widens every pattern; this module keeps its own so that it compiles alone, as
/// tests/bench/wasm-gemm includes it, and SIMD-widens the same way.)
pub fn f16_to_f32(h: u16) -> f32 {
    let magnitude = f32::from_bits(((h & 0x7fff) as u32) << 13) * F16_REBIAS;
    if h & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// 2^112.
const F16_REBIAS: f32 = 5.192_297e33;

/// [`scale_of`] for f16 values (their bits): the largest magnitude is the largest of the bits
/// without the sign (f16's order is its bits' order), 0x7c00 and above being infinity or NaN.
pub fn f16_scale(row: &[u16]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let max = simd128::max_magnitude_bits(row);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let max = row.iter().map(|h| h & 0x7fff).max().unwrap_or(0);
    if max >= 0x7c00 {
        f32::NAN
    } else {
        f16_to_f32(max) / QMAX
    }
}

/// The scale of values quantized together, and its inverse: their largest magnitude maps to
/// [`QMAX`]. A NaN or infinity among them makes the scale NaN (and the integers 0), so the
/// products they enter are NaN, as in f32, instead of silently finite.
pub fn scale_of(values: &[f32]) -> (f32, f32) {
    let mut max = 0f32;
    for &x in values {
        if !x.is_finite() {
            return (f32::NAN, 0.0);
        }
        max = max.max(x.abs());
    }
    if max > 0.0 {
        (max / QMAX, QMAX / max)
    } else {
        (0.0, 0.0)
    }
}

/// x (already scaled) as an integer of at most [`QMAX`]; NaN gives 0 (the scale carries it).
fn quantize(x: f32) -> i16 {
    x.round_ties_even().clamp(-QMAX, QMAX) as i16
}

/// The left factor: rows of `k` f32 values, `stride` apart in `data` (a part of a wider
/// matrix's columns, or all of them), multiplied along k by `scale` where it is not empty (the
/// row scales [`PackedB::pack`] returned for an untransposed `b`).
#[derive(Debug, Clone, Copy)]
pub struct Lhs<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub scale: &'a [f32],
}

/// `a` quantized: its k as pairs of i16 (one u32 each, the kernel's broadcast), the rows of each
/// tile of `MR` interleaved (pair p of its rows side by side: the kernel's `MR` broadcasts load
/// from one address and constant offsets), and a scale per row and block.
struct QuantizedA {
    pairs: Vec<u32>,
    scale: Vec<f32>,
}

/// Rows `rows` of `a` quantized per block, padded to a multiple of `MR` rows with zeros.
fn quantize_a(a: &Lhs, k: usize, rows: std::ops::Range<usize>) -> QuantizedA {
    let kp = k.div_ceil(BLOCK) * PAIRS;
    let blocks = kp / PAIRS;
    let m = rows.len().div_ceil(MR) * MR;
    let mut q = QuantizedA {
        pairs: vec![0; m * kp],
        scale: vec![0.0; m * blocks],
    };
    let mut buf = [0f32; BLOCK];
    let mut row_q = vec![0u32; kp];
    for (i, r) in rows.enumerate() {
        let row = &a.data[r * a.stride..r * a.stride + k];
        for b in 0..blocks {
            let start = b * BLOCK;
            let end = (start + BLOCK).min(k);
            let out = &mut row_q[b * PAIRS..(b + 1) * PAIRS];
            let scale = if a.scale.is_empty() {
                &[] as &[f32]
            } else {
                &a.scale[start..end]
            };
            q.scale[i * blocks + b] = if end - start == BLOCK {
                quantize_block(&row[start..end], scale, out)
            } else {
                // The last block of a k that is not a multiple of BLOCK: zeros after its end.
                buf.fill(0.0);
                buf[..end - start].copy_from_slice(&row[start..end]);
                let mut ones = [1f32; BLOCK];
                ones[..scale.len()].copy_from_slice(scale);
                quantize_block(&buf, if scale.is_empty() { &[] } else { &ones }, out)
            };
        }
        let tile = &mut q.pairs[i / MR * MR * kp..(i / MR + 1) * MR * kp];
        for (p, &pair) in row_q.iter().enumerate() {
            tile[p * MR + i % MR] = pair;
        }
    }
    q
}

/// One block of `a` (times `scale`, if given) into `out`'s pairs; returns the block's scale.
fn quantize_block(x: &[f32], scale: &[f32], out: &mut [u32]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::quantize_block(x, scale, out)
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and F16C (checked).
        return unsafe { avx2::quantize_block(x, scale, out) };
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        portable_quantize_block(x, scale, out)
    }
}

/// [`quantize_block`] element by element: the same results as the SIMD one.
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128"),
    allow(dead_code)
)]
fn portable_quantize_block(x: &[f32], scale: &[f32], out: &mut [u32]) -> f32 {
    let mut buf = [0f32; BLOCK];
    for (i, d) in buf.iter_mut().enumerate() {
        *d = if scale.is_empty() {
            x[i]
        } else {
            x[i] * scale[i]
        };
    }
    let (s, inv) = scale_of(&buf);
    for (p, pair) in out.iter_mut().zip(buf.chunks_exact(2)) {
        let lo = quantize(pair[0] * inv) as u16 as u32;
        let hi = quantize(pair[1] * inv) as u16 as u32;
        *p = lo | hi << 16;
    }
    s
}

/// `c = a[rows] · b`: rows `rows` of `a` (`[m, k]`) by `b` (`[k, n]`), into `c`, whose row i
/// (for a's row `rows.start + i`) starts at `i * c_stride` and takes n values, added to what is
/// there with `accumulate`, else written over it.
pub fn matmul(
    a: &Lhs,
    b: &PackedB,
    rows: std::ops::Range<usize>,
    c: &mut [f32],
    c_stride: usize,
    accumulate: bool,
) {
    let (k, n) = b.dims();
    let q = quantize_a(a, k, rows.clone());
    let kp = b.pairs();
    let blocks = kp / PAIRS;
    let (panels, panel_len) = (n.div_ceil(NR), kp * NR * 2);
    let group = panels_per_kernel();
    let mut tiles = [[[0f32; NR]; MR]; 4];
    for g0 in (0..panels).step_by(group) {
        let tiles = &mut tiles[..group.min(panels - g0)];
        let bp = &b.data[g0 * panel_len..(g0 + tiles.len()) * panel_len];
        for i0 in (0..rows.len()).step_by(MR) {
            let ap = &q.pairs[i0 * kp..(i0 + MR) * kp];
            let sp = &q.scale[i0 * blocks..(i0 + MR) * blocks];
            kernels(ap, sp, bp, kp, tiles);
            for (panel, tile) in (g0..).zip(tiles.iter()) {
                let cols = NR.min(n - panel * NR);
                for (r, t) in tile.iter().enumerate().take(rows.len() - i0) {
                    let at = (i0 + r) * c_stride + panel * NR;
                    let dst = &mut c[at..at + cols];
                    let scale = &b.scale[panel * NR..panel * NR + cols];
                    for ((d, &x), &s) in dst.iter_mut().zip(t).zip(scale) {
                        if accumulate {
                            *d += x * s;
                        } else {
                            *d = x * s;
                        }
                    }
                }
            }
        }
    }
}

/// Panels of b one kernel call takes: with AVX2 several (a tile of `MR` rows by several
/// panels' [`NR`] columns, each broadcast of a serving each panel: [`avx2::group`]), else 1.
fn panels_per_kernel() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return avx2::group();
    }
    1
}

/// The tiles of `tiles.len()` consecutive panels of b (`bp`: all of them).
fn kernels(ap: &[u32], sp: &[f32], bp: &[i16], kp: usize, tiles: &mut [[[f32; NR]; MR]]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and F16C (checked).
        return unsafe { avx2::panels(ap, sp, bp, kp, tiles) };
    }
    for (t, tile) in tiles.iter_mut().enumerate() {
        kernel(ap, sp, &bp[t * kp * NR * 2..], kp, tile);
    }
}

/// One tile: `MR` rows of quantized `a` (`ap`: `MR` rows of `kp` pairs; `sp`: their block
/// scales) by one panel of `b` (`bp`), summed over all k.
fn kernel(ap: &[u32], sp: &[f32], bp: &[i16], kp: usize, out: &mut [[f32; NR]; MR]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::kernel(ap, sp, bp, kp, out)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        portable_kernel(ap, sp, bp, kp, out)
    }
}

/// The kernel lane by lane, in the SIMD kernel's order: the same integer sums (exact) and the
/// same f32 operations per block, so the same results to the bit.
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128"),
    allow(dead_code)
)]
fn portable_kernel(ap: &[u32], sp: &[f32], bp: &[i16], kp: usize, out: &mut [[f32; NR]; MR]) {
    let blocks = kp / PAIRS;
    *out = [[0.0; NR]; MR];
    for b in 0..blocks {
        let mut acc = [[0i32; NR]; MR];
        for p in b * PAIRS..(b + 1) * PAIRS {
            let bv = &bp[p * NR * 2..(p + 1) * NR * 2];
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = ap[p * MR + r];
                let (lo, hi) = (a as u16 as i16 as i32, (a >> 16) as u16 as i16 as i32);
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc += lo * bv[2 * j] as i32 + hi * bv[2 * j + 1] as i32;
                }
            }
        }
        for r in 0..MR {
            let s = sp[r * blocks + b];
            for j in 0..NR {
                out[r][j] += acc[r][j] as f32 * s;
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use super::{BLOCK, MR, NR, NV, PAIRS, QMAX};
    use core::arch::wasm32::*;

    /// The largest of `row`'s bits without their sign.
    pub(super) fn max_magnitude_bits(row: &[u16]) -> u16 {
        let mask = u16x8_splat(0x7fff);
        let mut max = u16x8_splat(0);
        let chunks = row.chunks_exact(8);
        let tail = chunks
            .remainder()
            .iter()
            .map(|h| h & 0x7fff)
            .max()
            .unwrap_or(0);
        for c in chunks {
            // SAFETY: c holds 8 u16 (16 bytes); any alignment.
            let v = unsafe { v128_load(c.as_ptr() as *const v128) };
            max = u16x8_max(max, v128_and(v, mask));
        }
        let lanes: [u16; 8] = unsafe { core::mem::transmute(max) };
        lanes.into_iter().fold(tail, u16::max)
    }

    /// 8 f16 (bits) as two f32x4, as [`super::f16_to_f32`] does each.
    fn widen8(v: v128) -> [v128; 2] {
        let mag = v128_and(v, u16x8_splat(0x7fff));
        let sign = v128_and(v, u16x8_splat(0x8000));
        let rebias = f32x4_splat(super::F16_REBIAS);
        let wide = |m: v128, s: v128| {
            let x = f32x4_mul(i32x4_shl(m, 13), rebias);
            v128_or(x, i32x4_shl(s, 16))
        };
        [
            wide(u32x4_extend_low_u16x8(mag), u32x4_extend_low_u16x8(sign)),
            wide(u32x4_extend_high_u16x8(mag), u32x4_extend_high_u16x8(sign)),
        ]
    }

    /// 8 values times `inv`, as [`super::quantize`] rounds and clamps each.
    fn quantize8(x: [v128; 2], inv: v128) -> v128 {
        let (lo, hi) = (i32x4_splat(-(QMAX as i32)), i32x4_splat(QMAX as i32));
        let q = |v: v128| {
            let r = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v, inv)));
            i32x4_min(i32x4_max(r, lo), hi)
        };
        i16x8_narrow_i32x4(q(x[0]), q(x[1]))
    }

    /// Column `j` of a panel from w's row (all k of it, f16 bits): each pair of k to its place.
    pub(super) fn fill_column(row: &[u16], inv: f32, j: usize, panel: &mut [i16]) {
        let inv4 = f32x4_splat(inv);
        let chunks = row.chunks_exact(8);
        let done = row.len() - chunks.remainder().len();
        assert!(panel.len() >= row.len().div_ceil(2) * NR * 2);
        let base = panel.as_mut_ptr();
        for (c, src) in chunks.enumerate() {
            // SAFETY: src holds 8 u16; the asserted panel length covers pairs 4c..4c + 4.
            unsafe {
                let q = quantize8(widen8(v128_load(src.as_ptr() as *const v128)), inv4);
                let at = |t: usize| base.add(((4 * c + t) * NR + j) * 2) as *mut u32;
                v128_store32_lane::<0>(q, at(0));
                v128_store32_lane::<1>(q, at(1));
                v128_store32_lane::<2>(q, at(2));
                v128_store32_lane::<3>(q, at(3));
            }
        }
        for (kk, &h) in row.iter().enumerate().skip(done) {
            panel[(kk / 2 * NR + j) * 2 + kk % 2] = super::quantize(super::f16_to_f32(h) * inv);
        }
    }

    /// Two rows' (2p and 2p + 1) values for a panel's NR columns, interleaved into their pairs.
    pub(super) fn fill_row_pair(rows: [&[u16]; 2], inv: [f32; 2], out: &mut [i16]) {
        assert!(rows[0].len() == NR && rows[1].len() == NR && out.len() == NR * 2);
        // SAFETY: each row holds NR = 8 u16, out 16 i16 (asserted); any alignment.
        unsafe {
            let q = |r: usize| {
                let v = v128_load(rows[r].as_ptr() as *const v128);
                quantize8(widen8(v), f32x4_splat(inv[r]))
            };
            let (a, b) = (q(0), q(1));
            let lo = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(a, b);
            let hi = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(a, b);
            v128_store(out.as_mut_ptr() as *mut v128, lo);
            v128_store(out.as_mut_ptr().add(8) as *mut v128, hi);
        }
    }

    /// [`super::portable_quantize_block`] 4 lanes at a time: the same max (order does not
    /// change a max), the same ties-to-even rounding (`f32x4.nearest`) and clamp.
    pub(super) fn quantize_block(x: &[f32], scale: &[f32], out: &mut [u32]) -> f32 {
        assert!(x.len() == BLOCK && (scale.is_empty() || scale.len() == BLOCK));
        assert!(out.len() == PAIRS);
        let load = |s: &[f32], i: usize| {
            // SAFETY: i + 4 <= BLOCK, the slices' length (asserted); any alignment.
            unsafe { v128_load(s.as_ptr().add(i) as *const v128) }
        };
        let mut v = [f32x4_splat(0.0); BLOCK / 4];
        let mut max = f32x4_splat(0.0);
        for (i, v) in v.iter_mut().enumerate() {
            *v = load(x, 4 * i);
            if !scale.is_empty() {
                *v = f32x4_mul(*v, load(scale, 4 * i));
            }
            // wasm's f32x4.max gives NaN where either lane is NaN.
            max = f32x4_max(max, f32x4_abs(*v));
        }
        let lanes = [
            f32x4_extract_lane::<0>(max),
            f32x4_extract_lane::<1>(max),
            f32x4_extract_lane::<2>(max),
            f32x4_extract_lane::<3>(max),
        ];
        let (s, inv) = if lanes.iter().any(|m| !m.is_finite()) {
            (f32::NAN, 0.0)
        } else {
            let m = lanes.iter().fold(0f32, |a, &b| a.max(b));
            if m > 0.0 {
                (m / QMAX, QMAX / m)
            } else {
                (0.0, 0.0)
            }
        };
        let inv = f32x4_splat(inv);
        let (lo, hi) = (i32x4_splat(-(QMAX as i32)), i32x4_splat(QMAX as i32));
        let q = |v: v128| {
            let r = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v, inv)));
            i32x4_min(i32x4_max(r, lo), hi)
        };
        for (i, pair) in v.chunks_exact(2).enumerate() {
            // SAFETY: 4 u32 (8 i16) at 4i, within out's PAIRS = 16 u32.
            unsafe {
                v128_store(
                    out.as_mut_ptr().add(4 * i) as *mut v128,
                    i16x8_narrow_i32x4(q(pair[0]), q(pair[1])),
                )
            };
        }
        s
    }

    pub(super) fn kernel(ap: &[u32], sp: &[f32], bp: &[i16], kp: usize, out: &mut [[f32; NR]; MR]) {
        let blocks = kp / PAIRS;
        assert!(ap.len() >= MR * kp && sp.len() >= MR * blocks && bp.len() >= kp * NR * 2);
        let mut f = [[f32x4_splat(0.0); NV]; MR];
        let b = bp.as_ptr() as *const v128;
        for blk in 0..blocks {
            let mut acc = [[i32x4_splat(0); NV]; MR];
            for p in blk * PAIRS..(blk + 1) * PAIRS {
                // SAFETY: p < kp, and the lengths asserted above cover kp pairs of MR rows of a
                // and kp · NV vectors of b (unaligned loads).
                unsafe {
                    let bv: [v128; NV] = core::array::from_fn(|v| v128_load(b.add(p * NV + v)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let a = v128_load32_splat(ap.as_ptr().add(p * MR + r));
                        for (acc, &b) in acc.iter_mut().zip(&bv) {
                            *acc = i32x4_add(*acc, i32x4_dot_i16x8(a, b));
                        }
                    }
                }
            }
            for (r, (f, acc)) in f.iter_mut().zip(&acc).enumerate() {
                let s = f32x4_splat(sp[r * blocks + blk]);
                for (f, &acc) in f.iter_mut().zip(acc) {
                    *f = f32x4_add(*f, f32x4_mul(f32x4_convert_i32x4(acc), s));
                }
            }
        }
        for (out, f) in out.iter_mut().zip(&f) {
            for (v, &x) in f.iter().enumerate() {
                // SAFETY: out holds NR = NV · 4 f32s; v128_store takes any alignment.
                unsafe { v128_store(out.as_mut_ptr().add(4 * v) as *mut v128, x) };
            }
        }
    }
}

/// The kernels with x86-64's AVX2 (and F16C to widen f16), chosen at run time: natively this
/// product ([`FrozenProducts::Int16`](super::FrozenProducts::Int16), `webtune train --int16`)
/// then computes what the page's wasm computes, to the bit, at native speed. Why it can pay
/// natively too: `vpmaddwd` (`vpdpwssd` with VNNI, its sum included) is 16 multiply-adds of i16
/// pairs per 256-bit instruction, where an f32 FMA is 8; measured on one thread of this AMD EPYC
/// (Zen 4), SmolLM2's shapes: 150-170 GFLOP/s with VNNI, 110-125 with AVX2 alone, gemm's f32
/// ~100 ([`group`]). Each function gives exactly what its portable twin gives (the tests below
/// compare, bit for bit).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, MR, NR, PAIRS, QMAX};
    use core::arch::x86_64::*;

    /// Whether this CPU has what these kernels use (std caches the answer).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
    }

    /// 8 values times `inv`, as [`super::quantize`] rounds and clamps each: NaN to 0, the clamp
    /// in f32 (x86's conversion gives i32::MIN for NaN and infinities; an infinity comes of a
    /// subnormal scale).
    #[target_feature(enable = "avx2")]
    fn quantize8(x: __m256, inv: __m256) -> __m256i {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let v = _mm256_mul_ps(x, inv);
        let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
        let r = _mm256_round_ps::<NEAREST>(v);
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-QMAX)),
            _mm256_set1_ps(QMAX),
        );
        _mm256_cvtps_epi32(r)
    }

    /// 8 i32 (each within i16) as 8 i16 in order.
    #[target_feature(enable = "avx2")]
    fn narrow8(q: __m256i) -> __m128i {
        _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q))
    }

    /// 8 f16 (bits) widened (exactly: F16C converts every finite f16, subnormals too).
    #[target_feature(enable = "avx2,f16c")]
    fn widen8(src: &[u16]) -> __m256 {
        assert!(src.len() >= 8);
        // SAFETY: 8 u16 (asserted); any alignment.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(src.as_ptr() as *const __m128i) })
    }

    /// Column `j` of a panel from w's row (all k of it, f16 bits), as [`super::Packer::fill`].
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn fill_column(row: &[u16], inv: f32, j: usize, panel: &mut [i16]) {
        let inv8 = _mm256_set1_ps(inv);
        let chunks = row.chunks_exact(8);
        let done = row.len() - chunks.remainder().len();
        assert!(panel.len() >= row.len().div_ceil(2) * NR * 2);
        let base = panel.as_mut_ptr();
        for (c, src) in chunks.enumerate() {
            let q = narrow8(quantize8(widen8(src), inv8));
            // SAFETY: 128 bits as 4 i32, plain data.
            let pairs: [i32; 4] = unsafe { core::mem::transmute(q) };
            for (t, pair) in pairs.into_iter().enumerate() {
                // SAFETY: pair 4c + t of column j lies within the asserted panel length.
                unsafe { (base.add(((4 * c + t) * NR + j) * 2) as *mut i32).write_unaligned(pair) };
            }
        }
        for (kk, &h) in row.iter().enumerate().skip(done) {
            panel[(kk / 2 * NR + j) * 2 + kk % 2] = super::quantize(super::f16_to_f32(h) * inv);
        }
    }

    /// Two rows' (2p and 2p + 1) values for a panel's NR columns, interleaved into their pairs.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn fill_row_pair(rows: [&[u16]; 2], inv: [f32; 2], out: &mut [i16]) {
        assert!(rows[0].len() == NR && rows[1].len() == NR && out.len() == NR * 2);
        let q = |r: usize| narrow8(quantize8(widen8(rows[r]), _mm256_set1_ps(inv[r])));
        let (a, b) = (q(0), q(1));
        // SAFETY: out holds 16 i16 (asserted); any alignment.
        unsafe {
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, _mm_unpacklo_epi16(a, b));
            _mm_storeu_si128(
                out.as_mut_ptr().add(8) as *mut __m128i,
                _mm_unpackhi_epi16(a, b),
            );
        }
    }

    /// [`super::portable_quantize_block`] 8 lanes at a time: the same max, rounding and clamp.
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize_block(x: &[f32], scale: &[f32], out: &mut [u32]) -> f32 {
        assert!(x.len() == BLOCK && (scale.is_empty() || scale.len() == BLOCK));
        assert!(out.len() == PAIRS);
        // SAFETY: i + 8 <= BLOCK, the slices' length (asserted); any alignment.
        let load = |s: &[f32], i: usize| unsafe { _mm256_loadu_ps(s.as_ptr().add(i)) };
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut v = [_mm256_setzero_ps(); BLOCK / 8];
        let mut max = _mm256_setzero_ps();
        let mut bad = _mm256_setzero_ps();
        for (i, v) in v.iter_mut().enumerate() {
            *v = load(x, 8 * i);
            if !scale.is_empty() {
                *v = _mm256_mul_ps(*v, load(scale, 8 * i));
            }
            let a = _mm256_and_ps(*v, abs);
            // Infinity or NaN (unordered): the scale is NaN, as `scale_of` says.
            bad = _mm256_or_ps(
                bad,
                _mm256_cmp_ps::<_CMP_NLE_UQ>(a, _mm256_set1_ps(f32::MAX)),
            );
            max = _mm256_max_ps(max, a);
        }
        let (s, inv) = if _mm256_movemask_ps(bad) != 0 {
            (f32::NAN, 0.0)
        } else {
            // SAFETY: 256 bits as 8 f32, plain data.
            let lanes: [f32; 8] = unsafe { core::mem::transmute(max) };
            let m = lanes.iter().fold(0f32, |a, &b| a.max(b));
            if m > 0.0 {
                (m / QMAX, QMAX / m)
            } else {
                (0.0, 0.0)
            }
        };
        let inv = _mm256_set1_ps(inv);
        for (i, v) in v.iter().enumerate() {
            let q = narrow8(quantize8(*v, inv));
            // SAFETY: 4 u32 (8 i16) at 4i, within out's PAIRS = 16 u32.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(4 * i) as *mut __m128i, q) };
        }
        s
    }

    /// [`super::portable_kernel`] for `G` consecutive panels (`bp`: all of them), each into its
    /// tile, a panel's pair of rows of b (NR = 8 columns, 16 i16) in one register: each
    /// broadcast of a's pair serves `G` multiply-adds. Per column the same operations as the
    /// portable kernel. `$madd(acc, a, b)`: acc plus each i32 lane's two i16 products (exact).
    macro_rules! panels_kernel {
        ($name:ident, $features:literal, $madd:expr) => {
            #[target_feature(enable = $features)]
            pub(super) fn $name<const G: usize>(
                ap: &[u32],
                sp: &[f32],
                bp: &[i16],
                kp: usize,
                out: [&mut [[f32; NR]; MR]; G],
            ) {
                let blocks = kp / PAIRS;
                assert!(ap.len() >= MR * kp && sp.len() >= MR * blocks);
                assert!(bp.len() >= G * kp * NR * 2);
                let mut f = [[_mm256_setzero_ps(); G]; MR];
                // A panel is kp vectors of 16 i16 (a pair of k for its NR columns), the next
                // one after it.
                let b = bp.as_ptr() as *const __m256i;
                let a = ap.as_ptr() as *const i32;
                for blk in 0..blocks {
                    let mut acc = [[_mm256_setzero_si256(); G]; MR];
                    for p in blk * PAIRS..(blk + 1) * PAIRS {
                        // SAFETY: p < kp, and the lengths asserted above cover kp pairs of MR
                        // rows of a and G panels of kp vectors of b (unaligned loads).
                        unsafe {
                            let bv: [__m256i; G] =
                                core::array::from_fn(|g| _mm256_loadu_si256(b.add(g * kp + p)));
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let av = _mm256_set1_epi32(a.add(p * MR + r).read_unaligned());
                                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                                    *acc = $madd(*acc, av, bv);
                                }
                            }
                        }
                    }
                    for (r, (f, acc)) in f.iter_mut().zip(&acc).enumerate() {
                        let s = _mm256_set1_ps(sp[r * blocks + blk]);
                        for (f, &acc) in f.iter_mut().zip(acc) {
                            *f = _mm256_add_ps(*f, _mm256_mul_ps(_mm256_cvtepi32_ps(acc), s));
                        }
                    }
                }
                for (g, out) in out.into_iter().enumerate() {
                    for (row, f) in out.iter_mut().zip(&f) {
                        // SAFETY: a row holds NR = 8 f32s; any alignment.
                        unsafe { _mm256_storeu_ps(row.as_mut_ptr(), f[g]) };
                    }
                }
            }
        };
    }
    panels_kernel!(panels_avx2, "avx2", |acc, a, b| _mm256_add_epi32(
        acc,
        _mm256_madd_epi16(a, b)
    ));
    // `vpdpwssd`: the multiply-adds and the sum in one instruction (AVX512-VNNI, on 256 bits).
    panels_kernel!(panels_vnni, "avx2,avx512vnni,avx512vl", |acc, a, b| {
        _mm256_dpwssd_epi32(acc, a, b)
    });

    /// Whether this CPU has AVX512-VNNI (Zen 4, Intel since Ice Lake).
    fn vnni() -> bool {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }

    /// Panels per call of [`panels`]: 4 with VNNI (16 accumulators of AVX-512's 32 registers),
    /// else 2 (8 of AVX2's 16; 4 spill). Measured on one thread of an AMD EPYC (Zen 4), SmolLM2's
    /// shapes for 256 rows: VNNI 150-170 GFLOP/s with 4 panels, 140-155 with 2, 100-110 with 1;
    /// AVX2 110-125 with 2, 95-110 with 1, 65-80 with 4; gemm's f32 ~100.
    pub(super) fn group() -> usize {
        if vnni() { 4 } else { 2 }
    }

    /// [`super::kernel`] for each of `tiles.len()` consecutive panels (`bp`: all of them), up
    /// to [`group`] at a time.
    #[target_feature(enable = "avx2")]
    pub(super) fn panels(
        ap: &[u32],
        sp: &[f32],
        bp: &[i16],
        kp: usize,
        tiles: &mut [[[f32; NR]; MR]],
    ) {
        let vnni = vnni();
        let step = group();
        for (c, tiles) in tiles.chunks_mut(step).enumerate() {
            let bp = &bp[c * step * kp * NR * 2..];
            macro_rules! run {
                ($($t:ident),+) => {
                    // SAFETY: VNNI checked where it is used; AVX2 is this function's.
                    unsafe {
                        if vnni {
                            panels_vnni(ap, sp, bp, kp, [$($t),+])
                        } else {
                            panels_avx2(ap, sp, bp, kp, [$($t),+])
                        }
                    }
                };
            }
            match tiles {
                [t0] => run!(t0),
                [t0, t1] => run!(t0, t1),
                [t0, t1, t2] => run!(t0, t1, t2),
                [t0, t1, t2, t3] => run!(t0, t1, t2, t3),
                _ => unreachable!("chunks of at most 4"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with a few large outliers (as LLM activations have).
    fn values(len: usize, seed: u64, outliers: bool) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|i| {
                s = crate::rng::mix64(s.wrapping_add(crate::rng::GOLDEN_GAMMA));
                let x = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if outliers && i % 97 == 3 { x * 60.0 } else { x }
            })
            .collect()
    }

    fn lhs<'a>(data: &'a [f32], stride: usize, scale: &'a [f32]) -> Lhs<'a> {
        Lhs {
            data,
            stride,
            scale,
        }
    }

    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64)
                    .sum();
            }
        }
        c
    }

    /// The largest error quantization can make in each c[i, j] = Σ a[i, k] b[k, j]: a[i, k] is off
    /// by at most half a step of its block (its block's max / 2QMAX), b[k, j] by half a step of
    /// its scale group (`b_max(k, j)` / 2QMAX); each product by |a| δb + δa |b| + δa δb. Plus
    /// the f32 sums' rounding (k · 2^-23 of Σ |a b|, generously).
    fn bound(
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        b_max: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let half = 0.5 / QMAX as f64;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            let da: Vec<f64> = (0..k)
                .map(|kk| {
                    let blk = &row[kk / BLOCK * BLOCK..((kk / BLOCK + 1) * BLOCK).min(k)];
                    blk.iter().fold(0f32, |x, v| x.max(v.abs())) as f64 * half
                })
                .collect();
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|kk| {
                        let (x, y) = (row[kk].abs() as f64, b[kk * n + j].abs() as f64);
                        let db = b_max(kk, j) as f64 * half;
                        x * db + da[kk] * y + da[kk] * db + (x * y) * k as f64 * 1.2e-7
                    })
                    .sum();
            }
        }
        out
    }

    fn check(got: &[f32], want: &[f64], bound: &[f64]) {
        for ((g, w), b) in got.iter().zip(want).zip(bound) {
            assert!((*g as f64 - w).abs() <= *b, "{g} against {w} (bound {b})");
        }
    }

    /// The forward product x · wᵀ (w `[n, k]`) and the backward one dy · w, odd sizes (every
    /// padding path), against f64, within the error quantization can make (`bound`).
    #[test]
    fn products_are_within_the_quantization_error() {
        let (m, k, n) = (13, 75, 19);
        let x = values(m * k, 1, true);
        let w = values(n * k, 2, false);
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let (fwd, none) = PackedB::pack(n, k, true, |r, out| {
            out.copy_from_slice(&w[r * k..(r + 1) * k])
        });
        assert!(none.is_empty());
        assert_eq!(fwd.dims(), (k, n));
        let mut c = vec![0f32; m * n];
        matmul(&lhs(&x, k, &[]), &fwd, 0..m, &mut c, n, false);
        let col_max: Vec<f32> = (0..n)
            .map(|j| {
                w[j * k..(j + 1) * k]
                    .iter()
                    .fold(0f32, |a, x| a.max(x.abs()))
            })
            .collect();
        let limit = bound(&x, &wt, m, k, n, |_, j| col_max[j]);
        check(&c, &reference(&x, &wt, m, k, n), &limit);

        // dy [m, n] · w [n, k]: w's row scales fold into dy.
        let dy = values(m * n, 3, true);
        let (bwd, scales) = PackedB::pack(n, k, false, |r, out| {
            out.copy_from_slice(&w[r * k..(r + 1) * k])
        });
        assert_eq!((bwd.dims(), scales.len()), ((n, k), n));
        let mut dx = vec![0f32; m * k];
        matmul(&lhs(&dy, n, &scales), &bwd, 0..m, &mut dx, k, false);
        // Here b's scales are its rows' (folded into a): b[o, i]'s error is |w[o]|max / 2QMAX.
        let row_max: Vec<f32> = (0..n)
            .map(|o| {
                w[o * k..(o + 1) * k]
                    .iter()
                    .fold(0f32, |a, x| a.max(x.abs()))
            })
            .collect();
        let limit = bound(&dy, &w, m, n, k, |o, _| row_max[o]);
        check(&dx, &reference(&dy, &w, m, n, k), &limit);
    }

    /// A part of the rows gives those rows of the whole product, to the bit (how threads split it).
    #[test]
    fn row_ranges_give_the_rows_of_the_whole() {
        let (m, k, n) = (11, 64, 9);
        let x = values(m * k, 4, true);
        let w = values(n * k, 5, false);
        let (b, _) = PackedB::pack(n, k, true, |r, out| {
            out.copy_from_slice(&w[r * k..(r + 1) * k])
        });
        let mut whole = vec![0f32; m * n];
        matmul(&lhs(&x, k, &[]), &b, 0..m, &mut whole, n, false);
        let mut part = vec![0f32; 6 * n];
        matmul(&lhs(&x, k, &[]), &b, 3..9, &mut part, n, false);
        assert_eq!(part, whole[3 * n..9 * n]);
    }

    /// a read from a wider matrix (its columns 5..5 + k) and c written into a wider one (its
    /// columns 2..2 + n), once over and once added: the same values as contiguous ones.
    #[test]
    fn strided_operands_and_accumulation_give_the_same_products() {
        let (m, k, n) = (6, 40, 10);
        let wide = values(m * (k + 9), 6, true);
        let x: Vec<f32> = (0..m)
            .flat_map(|i| wide[i * (k + 9) + 5..i * (k + 9) + 5 + k].to_vec())
            .collect();
        let w = values(n * k, 7, false);
        let (b, _) = PackedB::pack(n, k, true, |r, out| {
            out.copy_from_slice(&w[r * k..(r + 1) * k])
        });
        let mut want = vec![0f32; m * n];
        matmul(&lhs(&x, k, &[]), &b, 0..m, &mut want, n, false);
        let mut c = vec![1f32; m * (n + 3)];
        let a = lhs(&wide[5..], k + 9, &[]);
        matmul(&a, &b, 0..m, &mut c[2..], n + 3, false);
        matmul(&a, &b, 0..m, &mut c[2..], n + 3, true);
        for i in 0..m {
            let row = &c[i * (n + 3)..(i + 1) * (n + 3)];
            assert_eq!(&row[..2], &[1.0, 1.0]);
            assert_eq!(row[n + 2], 1.0);
            for j in 0..n {
                assert_eq!(row[2 + j], want[i * n + j] * 2.0);
            }
        }
    }

    /// f16 → f32 exact for every finite f16 (against `half`), and the f16 scale what
    /// [`scale_of`] gives for the widened values (NaN for a row with infinity or NaN).
    #[test]
    fn f16_values_widen_exactly_and_scale_as_f32() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits);
            if want.is_finite() {
                assert_eq!(
                    f16_to_f32(bits).to_bits(),
                    want.to_f32().to_bits(),
                    "{bits:#06x}"
                );
            }
        }
        let row: Vec<u16> = values(37, 8, true)
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        let wide: Vec<f32> = row.iter().map(|&h| f16_to_f32(h)).collect();
        assert_eq!(f16_scale(&row), scale_of(&wide).0);
        assert!(f16_scale(&[0x3c00, 0x7c00]).is_nan());
        assert!(f16_scale(&[0xfe00]).is_nan());
        assert_eq!(f16_scale(&[0x8000, 0]), 0.0);
    }

    /// Packing an f16 matrix from its bits gives the integers packing its widened values gives,
    /// both ways round, with a partial last panel, and rows of subnormals, of zeros and with an
    /// infinity or NaN (scale NaN, integers 0).
    #[test]
    fn f16_packing_is_packing_the_widened_values() {
        let (rows, cols) = (21, 19);
        let mut bits: Vec<u16> = values(rows * cols, 9, true)
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        bits[3 * cols..4 * cols].fill(0x8001); // -2^-24, the smallest subnormal
        bits[4 * cols + 2] = 0x0001;
        bits[5 * cols..6 * cols].fill(0);
        bits[6 * cols + 7] = 0x7c00; // infinity
        bits[7 * cols + 18] = 0xfe00; // NaN
        bits[16 * cols..17 * cols].fill(0x03ff); // the largest subnormal
        // `half` widens infinity and NaN as such (f16_to_f32 leaves them to its callers).
        let wide: Vec<f32> = bits
            .iter()
            .map(|&h| half::f16::from_bits(h).to_f32())
            .collect();
        for transposed in [true, false] {
            let scales: Vec<f32> = bits.chunks(cols).map(f16_scale).collect();
            let packer = Packer::new(rows, cols, transposed, scales);
            let mut data = vec![0i16; packer.panels() * packer.panel_len()];
            for (p, panel) in data.chunks_mut(packer.panel_len()).enumerate() {
                packer.fill_f16(p, panel, |r| &bits[r * cols..(r + 1) * cols]);
            }
            let (got, got_scale) = packer.finish(data);
            let (want, want_scale) = PackedB::pack(rows, cols, transposed, |r, out| {
                out.copy_from_slice(&wide[r * cols..(r + 1) * cols])
            });
            // Scales as bits: NaN for the rows with infinity or NaN.
            let bits = |s: &[f32]| s.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                (got.data, bits(&got.scale), bits(&got_scale)),
                (want.data, bits(&want.scale), bits(&want_scale)),
                "transposed: {transposed}"
            );
        }
    }

    /// The kernels and a's quantization this CPU runs (AVX2, and VNNI, where it has them)
    /// against their portable twins: the same bits, for blocks with outliers, subnormals, zeros,
    /// infinities and NaN, with and without row scales folded in, and for 1 to 5 panels at once.
    #[test]
    fn simd_kernels_give_the_portable_bits() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-45,
            -0.0,
            f32::MAX,
        ];
        for case in 0..40 {
            let mut x = values(BLOCK, 20 + case, true);
            let scale = values(BLOCK, 60 + case, false);
            match case % 5 {
                0 => x[case as usize % BLOCK] = specials[case as usize / 5 % specials.len()],
                1 => x.fill(1e-45),
                2 => x.fill(0.0),
                _ => {}
            }
            for sc in [&[] as &[f32], &scale] {
                let (mut got, mut want) = ([0u32; PAIRS], [0u32; PAIRS]);
                let s = quantize_block(&x, sc, &mut got);
                let t = portable_quantize_block(&x, sc, &mut want);
                assert_eq!((s.to_bits(), got), (t.to_bits(), want), "case {case}");
            }
        }
        for kp in [PAIRS, 3 * PAIRS, 36 * PAIRS] {
            let blocks = kp / PAIRS;
            let ap: Vec<u32> = values(MR * kp * 2, 7, false)
                .chunks(2)
                .map(|p| {
                    let q = |v: f32| (v * QMAX).round() as i16 as u16 as u32;
                    q(p[0]) | q(p[1]) << 16
                })
                .collect();
            let sp = values(MR * blocks, 8, true);
            let panels = 5;
            let bp: Vec<i16> = values(panels * kp * NR * 2, 9, false)
                .iter()
                .map(|v| (v * QMAX).round() as i16)
                .collect();
            let bits = |t: &[[[f32; NR]; MR]]| {
                t.iter()
                    .map(|t| t.map(|r| r.map(f32::to_bits)))
                    .collect::<Vec<_>>()
            };
            let mut want = vec![[[0f32; NR]; MR]; panels];
            for (t, want) in want.iter_mut().enumerate() {
                portable_kernel(&ap, &sp, &bp[t * kp * NR * 2..], kp, want);
            }
            for n in 1..=panels {
                let mut got = vec![[[0f32; NR]; MR]; n];
                kernels(&ap, &sp, &bp, kp, &mut got);
                assert_eq!(bits(&got), bits(&want[..n]), "kp {kp}, {n} panels");
                #[cfg(target_arch = "x86_64")]
                if avx2::available() {
                    // Both x86 kernels, whichever this CPU runs.
                    if let Ok(tiles) = <&mut [_; 2]>::try_from(&mut got[..n.min(2)]) {
                        let [t0, t1] = tiles;
                        // SAFETY: AVX2 checked.
                        unsafe { avx2::panels_avx2(&ap, &sp, &bp, kp, [t0, t1]) };
                        assert_eq!(bits(&got[..2]), bits(&want[..2]), "AVX2, kp {kp}");
                    }
                }
            }
        }
    }

    /// The largest quantized values (-8191 · -8191) in every position: a block's i32 sums must
    /// not wrap.
    #[test]
    fn extreme_values_do_not_overflow() {
        let (m, k, n) = (4, 96, 8);
        let x = vec![-3.0f32; m * k];
        let w = vec![-5.0f32; n * k];
        let (b, _) = PackedB::pack(n, k, true, |r, out| {
            out.copy_from_slice(&w[r * k..(r + 1) * k])
        });
        let mut c = vec![0f32; m * n];
        matmul(&lhs(&x, k, &[]), &b, 0..m, &mut c, n, false);
        for v in c {
            assert!((v - 15.0 * k as f32).abs() <= 1e-3 * 15.0 * k as f32, "{v}");
        }
    }

    /// Non-finite values in a give non-finite products (not silently finite ones), and zero
    /// rows or columns give zeros.
    #[test]
    fn non_finite_values_propagate_and_zeros_stay_zero() {
        let (m, k, n) = (4, 32, 8);
        let mut x = vec![0.5f32; m * k];
        x[5] = f32::NAN;
        x[k * 2 + 1] = f32::INFINITY;
        x[3 * k..].fill(0.0);
        let w = vec![0.25f32; n * k];
        let (b, _) = PackedB::pack(n, k, true, |r, out| {
            out.copy_from_slice(&w[r * k..(r + 1) * k])
        });
        let mut c = vec![0f32; m * n];
        matmul(&lhs(&x, k, &[]), &b, 0..m, &mut c, n, false);
        assert!(c[..n].iter().all(|v| v.is_nan()));
        assert!(c[n..2 * n].iter().all(|v| (v - 4.0).abs() < 1e-3));
        assert!(c[2 * n..3 * n].iter().all(|v| !v.is_finite()));
        assert!(c[3 * n..].iter().all(|&v| v == 0.0));
    }
}
