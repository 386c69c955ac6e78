//! Fused operations for the model's memory-bound steps: RMSNorm, SwiGLU's gate, rotary
//! embedding, causal softmax and the cross-entropy loss (also fused with the LM head), forward
//! and backward; and the products with a frozen weight kept in f16 ([`frozen_matmul`]), which
//! widen it for themselves, or run in 16-bit integers ([`int16`], [`FrozenProducts`]).
//!
//! Why: on the CPU a training step spent more time in element-wise ops than in its matmuls. burn
//! builds each of these from five to ten generic ops, each a pass over memory into a fresh tensor
//! (and as many again in their backward pass), one thread, with a scalar `exp`. Here each is one
//! pass, parallel over rows, with a vectorizable `exp` (measured: README, "Speed").
//!
//! On the CPU backend (burn's `flex`, natively and in wasm) the fused kernels run, with
//! hand-written backward passes under autodiff; on other devices (WebGPU) the same math is
//! composed from burn's ops, and burn's autodiff and kernel fusion handle it. Tests check the two
//! paths against each other and against PyTorch (the golden tests).

pub mod cpu;
pub mod int16;
mod ops;

use std::cell::Cell;

use burn::backend::Dispatch;
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Bool, DType, Device, Distribution, FloatDType, Int, Tensor, TensorData};

use ops::FusedOps;

std::thread_local! {
    /// The state of the dropout stream that the work running on this thread draws from, when
    /// one is set ([`with_dropout_stream`]).
    static DROPOUT_STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` with the fused CPU dropout drawing its seeds from a stream of its own seeded with
/// `seed`, instead of from the device's generator, and puts back the stream that was set before.
///
/// Why: a training step on the CPU runs its batch's shards at once on several threads
/// ([`crate::train`]); drawn from the device's one generator, their masks would depend on which
/// thread drew first. A stream per shard gives each the same masks whichever thread runs it, in
/// parallel or one after the other. The stream belongs to the thread, and nested calls (a shard
/// run by a thread waiting inside another) put the outer one back when they end.
pub fn with_dropout_stream<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DROPOUT_STREAM.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(DROPOUT_STREAM.with(|s| s.replace(Some(seed))));
    f()
}

/// The next seed of this thread's dropout stream, if [`with_dropout_stream`] set one.
fn next_dropout_seed() -> Option<u64> {
    DROPOUT_STREAM.with(|s| {
        let state = s.get()?.wrapping_add(crate::rng::GOLDEN_GAMMA);
        s.set(Some(state));
        Some(crate::rng::mix64(state))
    })
}

/// How the CPU backend multiplies by a frozen matrix kept in f16 (the frozen base of
/// `CausalLM::with_base_in_f16`, the page's "16-bit weights"): the product of an f32 matrix
/// is always gemm's in f32. A model carries its choice (`CausalLM::with_products`; a run's is
/// its spec's, `RunSpec::products`), so that two models in one process compute each its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrozenProducts {
    /// The weight widened to f32 a piece at a time, gemm's f32 product (for fewer than
    /// [`INT16_MIN_ROWS`] rows, [`cpu::f16_few_rows`]: the weight read in place): natively,
    /// where gemm's f32 runs at the CPU's fused multiply-add peak (on x86-64 with AVX2,
    /// [`Self::Int16`] is faster, `webtune train --int16`).
    Widened,
    /// Both factors rounded to 16-bit integers and multiplied exactly in i32 ([`int16`]): in wasm,
    /// where an `i32x4.dot_i16x8_s` does twice the multiply-adds of 128-bit f32 SIMD without
    /// fused multiply-add. Rows of fewer than [`INT16_MIN_ROWS`] (a generated token's) do not:
    /// quantizing the weight would cost more than its product; they read the f16 weight in
    /// place ([`cpu::f16_few_rows`]), as they do under [`Self::Widened`].
    Int16,
}

impl FrozenProducts {
    /// The platform's choice: [`Self::Int16`] in wasm with SIMD, [`Self::Widened`] elsewhere.
    pub fn platform() -> Self {
        if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
            Self::Int16
        } else {
            Self::Widened
        }
    }
}

impl Default for FrozenProducts {
    fn default() -> Self {
        Self::platform()
    }
}

/// Products with fewer rows than this stay widened under [`FrozenProducts::Int16`].
pub const INT16_MIN_ROWS: usize = 16;

/// Whether `device` runs the fused CPU kernels.
pub fn fused(device: &Device) -> bool {
    crate::device::is_cpu(device)
}

/// x / rms(x) * gamma over the last dimension.
///
/// # Shapes
/// - x: `[rows, d]`, gamma: `[d]` -> `[rows, d]`
pub fn rms_norm(x: Tensor<2>, gamma: Tensor<1>, eps: f64) -> Tensor<2> {
    if fused(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_rms_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            eps,
        ));
    }
    composed::rms_norm(x, gamma, eps)
}

/// silu(gate) * up.
///
/// # Shapes
/// - gate, up: `[rows, d]` -> `[rows, d]`
pub fn silu_mul(gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
    if fused(&gate.device()) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_silu_mul(
            gate.into_dispatch(),
            up.into_dispatch(),
        ));
    }
    composed::silu_mul(gate, up)
}

/// Rotary embedding (transformers' `rotate_half`), and the move from token rows to heads.
///
/// # Shapes
/// - x: `[batch * seq, heads * head_dim]`, cos/sin: `[seq, head_dim]`
///   -> `[batch, heads, seq, head_dim]`
pub fn rope(
    x: Tensor<2>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    batch: usize,
    heads: usize,
) -> Tensor<4> {
    if fused(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_rope(
            x.into_dispatch(),
            cos.clone().into_dispatch(),
            sin.clone().into_dispatch(),
            batch,
            heads,
        ));
    }
    composed::rope(x, cos, sin, batch, heads)
}

/// Dropout: each element kept with probability `1 - p` and scaled by `1 / (1 - p)`, else 0.
/// On the CPU one pass, the mask a hash of a seed drawn from the device's generator or from the
/// thread's stream ([`with_dropout_stream`]) (burn's
/// Bernoulli draws every element from a ChaCha generator on one thread, then multiplies twice:
/// ~0.4 s of a 2.7 s SmolLM2 step, measured), and the backward pass draws the same mask from the
/// seed instead of keeping it; elsewhere burn's ops.
///
/// # Shapes
/// - x: `[rows, d]` -> `[rows, d]`
pub fn dropout(x: Tensor<2>, p: f64) -> Tensor<2> {
    if p <= 0.0 {
        return x;
    }
    if fused(&x.device()) {
        let (y, _seed) = <Dispatch as FusedOps>::fused_dropout(x.into_dispatch(), 1.0 - p);
        return Tensor::from_dispatch(y);
    }
    composed::dropout(x, p)
}

/// softmax(scale * scores) over keys, each query seeing only keys up to its own position.
/// Row r of a block is query position `start + r % seq` (a block may stack the queries of
/// several heads that share keys).
///
/// # Shapes
/// - scores: `[batch, blocks, rows, keys]` (rows a multiple of seq) -> same
pub fn causal_softmax(scores: Tensor<4>, seq: usize, start: usize, scale: f64) -> Tensor<4> {
    if fused(&scores.device()) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_causal_softmax(
            scores.into_dispatch(),
            seq,
            start,
            scale,
        ));
    }
    composed::causal_softmax(scores, seq, start, scale)
}

/// A target that is not learned (a prompt's token, padding): its row adds 0 to the loss and
/// gets no gradient, and still counts among the rows of the mean (the trainer scales the loss
/// by the rows over the targets learned). PyTorch's `ignore_index`.
pub const IGNORED_TARGET: i64 = -100;

/// Mean next-token cross-entropy over the rows, rows whose target is [`IGNORED_TARGET`]
/// adding 0.
///
/// # Shapes
/// - logits: `[rows, vocab]`, targets: `[rows]` -> `[1]`
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    if fused(&logits.device()) {
        let lse = Tensor::<1>::from_dispatch(<Dispatch as FusedOps>::fused_log_sum_exp(
            logits.clone().detach().into_dispatch(),
        ));
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_cross_entropy(
            logits.into_dispatch(),
            targets.into_dispatch(),
            lse.into_dispatch(),
        ));
    }
    composed::cross_entropy(logits, targets)
}

/// Rows of logits one block of the fused LM-head loss holds: `[256, vocab]` f32 is 48 MiB for
/// SmolLM2's 49,152 tokens, where a 4 x 128 batch's whole logits and their gradient were 96 MiB
/// each. Each block packs the head's weight for its two matmuls again: measured on SmolLM2
/// (README, "Speed"), 64-row blocks saved 264 MB of peak training memory but made steps ~6%
/// slower; 256-row blocks save 193 MB at the old speed.
pub const LOSS_BLOCK_ROWS: usize = 256;
/// The blocks when memory matters more than time (activation recomputation, `TrainConfig::recompute`).
pub const LOSS_BLOCK_ROWS_LOW_MEMORY: usize = 64;

/// Mean next-token cross-entropy of the logits h · wᵀ, for a frozen head w: on the CPU backend
/// without the `[rows, vocab]` logits or their gradient ever held whole (`block_rows` rows at a
/// time, the gradient for h computed with the loss); elsewhere, or when w is trained, the
/// logits and then [`cross_entropy`].
///
/// # Shapes
/// - h: `[rows, d]`, w: `[vocab, d]`, targets: `[rows]` -> `[1]`
pub fn linear_cross_entropy(
    h: Tensor<2>,
    w: Tensor<2>,
    targets: Tensor<1, Int>,
    block_rows: usize,
    products: FrozenProducts,
) -> Tensor<1> {
    if fused(&h.device()) && !w.is_require_grad() {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_linear_cross_entropy(
            h.into_dispatch(),
            w.into_dispatch(),
            targets.into_dispatch(),
            block_rows,
            products == FrozenProducts::Int16,
        ));
    }
    cross_entropy(frozen_matmul(h, w.transpose(), products), targets)
}

/// x · w for a frozen w stored in any float type (a base kept in f16, `CausalLM::with_base_in_f16`):
/// on the CPU backend one product that widens w a piece at a time and keeps only w itself for
/// the backward pass (computed in f32: the CPU has no faster f16 arithmetic; or in 16-bit
/// integers, as `products` says: [`FrozenProducts::Int16`]); on a GPU the
/// product in f16, x rounded to f16 and the sums accumulated in f32 (cubecl's matmul), then
/// widened: half the bytes read, and no f32 copy of w. Its backward pass (x's gradient, dy · wᵀ)
/// runs in f16 the same way, with dy scaled by [`F16_GRADIENT_SCALE`] on the way in and back on
/// the way out. An f32 w is burn's matmul as before.
///
/// # Shapes
/// - x: `[rows, k]`, w: `[k, n]` -> `[rows, n]`
pub fn frozen_matmul(x: Tensor<2>, w: Tensor<2>, products: FrozenProducts) -> Tensor<2> {
    if w.dtype() == DType::F32 {
        return x.matmul(w);
    }
    if fused(&x.device()) && !w.is_require_grad() {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_frozen_matmul(
            x.into_dispatch(),
            w.into_dispatch(),
            products == FrozenProducts::Int16,
        ));
    }
    let s = F16_GRADIENT_SCALE;
    let half = FloatDType::from(w.dtype());
    let y = scale_gradient(x, 1.0 / s)
        .cast(half)
        .matmul(w)
        .cast(FloatDType::F32);
    scale_gradient(y, s)
}

/// What the gradient arriving at an f16 product is multiplied by before it is rounded to f16
/// (and divided by after), as mixed-precision training's loss scaling does: a mean loss over a
/// batch's tokens makes most of the gradient tiny (SmolLM2's LM head, 4 x 128 tokens: the
/// softmax's tail is ~1e-9 a logit), below f16's smallest normal value (6.1e-5) or under its
/// smallest value (6e-8) altogether. Measured on SmolLM2, a step's LoRA gradients on a GPU in
/// f16 against the CPU in f32: 15% apart (relative L2) unscaled, 0.41% with 2^10 (the CPU's f16
/// weights with f32 products: 0.18%). 2^10 leaves room above: the scaled gradient, or x's
/// gradient from it, reaches f16's largest value (65,504) only beyond 64 unscaled, orders of
/// magnitude above what a mean loss's gradients are.
pub const F16_GRADIENT_SCALE: f64 = 1024.0;

/// t itself, whose gradient is multiplied by `s` on its way back (for a power of two, exactly):
/// t · s − (t · s, detached) + (t, detached) is t, and only its first term has a gradient.
fn scale_gradient(t: Tensor<2>, s: f64) -> Tensor<2> {
    let scaled = t.clone().mul_scalar(s);
    scaled.clone() - scaled.detach() + t.detach()
}

/// t in f32 (t itself when it is): rows looked up in a table kept in f16.
pub fn f32(t: Tensor<2>) -> Tensor<2> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// The same operations composed from burn's ops: what runs on other devices, and the reference
/// the fused kernels are tested against.
pub mod composed {
    use super::*;

    /// Added to masked attention scores: exp() of it is exactly 0 in f32, yet it stays finite,
    /// so no backend meets inf - inf (WGSL promises nothing about infinities).
    const MASKED: f32 = -1.0e9;

    pub fn rms_norm(x: Tensor<2>, gamma: Tensor<1>, eps: f64) -> Tensor<2> {
        let rms = (x.clone().square().mean_dim(1) + eps).sqrt();
        (x / rms) * gamma.unsqueeze()
    }

    pub fn silu_mul(gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
        silu(gate) * up
    }

    pub fn rope(
        x: Tensor<2>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        batch: usize,
        heads: usize,
    ) -> Tensor<4> {
        let [seq, head_dim] = cos.dims();
        let x = x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let half = head_dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone().unsqueeze::<4>() + rotated * sin.clone().unsqueeze::<4>()
    }

    pub fn dropout(x: Tensor<2>, p: f64) -> Tensor<2> {
        let keep = 1.0 - p;
        let mask = x.random_like(Distribution::Bernoulli(keep));
        x * mask / keep
    }

    pub fn causal_softmax(scores: Tensor<4>, seq: usize, start: usize, scale: f64) -> Tensor<4> {
        let [_, _, rows, keys] = scores.dims();
        let scores = scores.mul_scalar(scale);
        if start + rows.min(seq.max(1)) <= 1 {
            return softmax(scores, 3); // one query, which sees every key
        }
        let mask: Vec<bool> = (0..rows)
            .flat_map(|r| (0..keys).map(move |j| j > start + r % seq.max(1)))
            .collect();
        let device = scores.device();
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(mask, [1, 1, rows, keys]), &device);
        softmax(scores.mask_fill(mask, MASKED), 3)
    }

    pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
        let [rows, _] = logits.dims();
        let learned = targets.clone().greater_equal_elem(0).float();
        let targets = targets.clamp_min(0);
        let logp = log_softmax(logits, 1);
        let picked = logp.gather(1, targets.reshape([rows, 1])).reshape([rows]);
        (picked * learned)
            .sum()
            .div_scalar(rows.max(1) as f64)
            .neg()
    }
}

#[cfg(test)]
mod tests;
