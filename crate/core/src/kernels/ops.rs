//! The fused operations as a burn backend extension: implemented for the CPU backend (`Flex`,
//! with the kernels of [`super::cpu`]) and for autodiff over it, with hand-written backward
//! passes. Other backends never reach this trait: [`super`] checks the device first and composes
//! burn's own ops there.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Distribution, FloatDType, Shape, TensorData};

use super::{INT16_MIN_ROWS, cpu, int16};

/// Shapes and constants the kernels need besides their tensors.
#[backend_extension(Autodiff, Flex)]
pub trait FusedOps: Backend {
    /// x `[rows, d]`, gamma `[d]` -> `[rows, d]`.
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    fn fused_rms_norm_backward_gamma(
        x: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// silu(gate) * up, both `[rows, d]`.
    fn fused_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `[2, rows, d]`: d gate, then d up.
    fn fused_silu_mul_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Dropout of x `[rows, d]`, keeping each element with probability `keep` (scaled by
    /// 1 / keep): the output, and the mask's seed `[2]`, drawn from the device's generator.
    fn fused_dropout(x: FloatTensor<Self>, keep: f64) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The same mask (from its seed) applied to x: dropout's backward pass.
    fn fused_dropout_with_seed(
        x: FloatTensor<Self>,
        keep: f64,
        seed: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// x `[batch * seq, heads * head_dim]`, cos/sin `[seq, head_dim]` -> `[batch, heads, seq, head_dim]`.
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        batch: usize,
        heads: usize,
    ) -> FloatTensor<Self>;
    fn fused_rope_backward(
        dy: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// scores `[batch, blocks, rows, keys]` -> probabilities, row r being query `start + r % seq`.
    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        seq: usize,
        start: usize,
        scale: f64,
    ) -> FloatTensor<Self>;
    fn fused_causal_softmax_backward(
        probs: FloatTensor<Self>,
        dprobs: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;

    /// logits `[rows, vocab]` -> log-sum-exp per row `[rows]`.
    fn fused_log_sum_exp(logits: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Mean cross-entropy `[1]` of logits `[rows, vocab]` against targets `[rows]`, given their
    /// log-sum-exp.
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    fn fused_cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        dloss: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Mean cross-entropy `[1]` of the logits h · wᵀ (h `[rows, d]`, w `[vocab, d]`, frozen)
    /// against targets `[rows]`. The logits exist `block_rows` rows at a time, never whole.
    /// `int16`: an f16 w's products in 16-bit integers ([`super::FrozenProducts::Int16`]).
    fn fused_linear_cross_entropy(
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        block_rows: usize,
        int16: bool,
    ) -> FloatTensor<Self>;
    /// The same loss, and its gradient for h `[rows, d]` from the same pass over the logits.
    fn fused_linear_cross_entropy_with_grad(
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        block_rows: usize,
        int16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// x times the one value of `g` (`[1]`): a gradient times its upstream scalar.
    fn fused_scale(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self>;

    /// x `[rows, k]` times a frozen w `[k, n]` stored in any float type -> `[rows, n]` in f32:
    /// an f16 base is widened for the product into a temporary f32 copy (an LM head's a few
    /// thousand of its `n` columns at a time), so the model keeps two bytes a weight; or in
    /// 16-bit integers (with `int16`: [`FrozenProducts::Int16`]); or, for fewer than
    /// [`INT16_MIN_ROWS`] rows, read in place ([`cpu::f16_few_rows`]). Only x is differentiated.
    fn fused_frozen_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        int16: bool,
    ) -> FloatTensor<Self>;
    /// x `[rows, n]` times wᵀ for w `[k, n]`: [`Self::fused_frozen_matmul`]'s backward pass.
    fn fused_frozen_matmul_t(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        int16: bool,
    ) -> FloatTensor<Self>;
}

// ---- the CPU backend ------------------------------------------------------------------------

/// A contiguous f32 copy (or the tensor itself when it already is one).
fn f32s(t: &FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t.clone()
    } else {
        // The models here compute in f32; anything else is converted once.
        FlexTensor::from_data(t.clone().into_data().convert::<f32>())
    };
    t.to_contiguous()
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

fn out(shape: Vec<usize>, f: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut t = FlexTensor::empty(Shape::from(shape), DType::F32);
    f(t.storage_mut::<f32>());
    t
}

fn indices(t: &FlexTensor) -> Vec<usize> {
    t.clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|v| usize::try_from(v).unwrap_or(cpu::IGNORED))
        .collect()
}

impl FusedOps for Flex {
    fn fused_rms_norm(x: FlexTensor, gamma: FlexTensor, eps: f64) -> FlexTensor {
        let (x, gamma) = (f32s(&x), f32s(&gamma));
        out(dims(&x), |y| {
            cpu::rms_norm(x.storage(), gamma.storage(), eps as f32, y)
        })
    }

    fn fused_rms_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        eps: f64,
        dy: FlexTensor,
    ) -> FlexTensor {
        let (x, gamma, dy) = (f32s(&x), f32s(&gamma), f32s(&dy));
        out(dims(&x), |dx| {
            cpu::rms_norm_backward(x.storage(), gamma.storage(), eps as f32, dy.storage(), dx)
        })
    }

    fn fused_rms_norm_backward_gamma(x: FlexTensor, eps: f64, dy: FlexTensor) -> FlexTensor {
        let (x, dy) = (f32s(&x), f32s(&dy));
        let d = *dims(&x).last().unwrap_or(&0);
        let g = cpu::rms_norm_backward_gamma(x.storage(), d, eps as f32, dy.storage());
        out(vec![d], |o| o.copy_from_slice(&g))
    }

    fn fused_silu_mul(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        let (gate, up) = (f32s(&gate), f32s(&up));
        let shape = dims(&gate);
        let row = *shape.last().unwrap_or(&1);
        out(shape, |y| {
            cpu::silu_mul(gate.storage(), up.storage(), y, row)
        })
    }

    fn fused_silu_mul_backward(gate: FlexTensor, up: FlexTensor, dy: FlexTensor) -> FlexTensor {
        let (gate, up, dy) = (f32s(&gate), f32s(&up), f32s(&dy));
        let shape = dims(&gate);
        let row = *shape.last().unwrap_or(&1);
        let both = [vec![2], shape].concat();
        out(both, |o| {
            cpu::silu_mul_backward(gate.storage(), up.storage(), dy.storage(), o, row)
        })
    }

    fn fused_dropout(x: FlexTensor, keep: f64) -> (FlexTensor, FlexTensor) {
        // Two 24-bit draws (exact in f32) from the thread's dropout stream, or else from the
        // generator `Device::seed` sets: runs stay reproducible.
        let seed = match super::next_dropout_seed() {
            Some(s) => out(vec![2], |y| {
                y[0] = ((s >> 24) & 0xFF_FFFF) as f32;
                y[1] = (s & 0xFF_FFFF) as f32;
            }),
            None => Flex::float_random(
                Shape::from(vec![2]),
                Distribution::Uniform(0.0, 16_777_216.0),
                &Default::default(),
                FloatDType::F32,
            ),
        };
        let y = Self::fused_dropout_with_seed(x, keep, seed.clone());
        (y, seed)
    }

    fn fused_dropout_with_seed(x: FlexTensor, keep: f64, seed: FlexTensor) -> FlexTensor {
        let (x, seed) = (f32s(&x), f32s(&seed));
        let draws = seed.storage::<f32>();
        let seed = draws
            .iter()
            .fold(0u64, |s, &d| (s << 24) | u64::from(d as u32 & 0xFF_FFFF));
        let shape = dims(&x);
        let row = *shape.last().unwrap_or(&1);
        out(shape, |y| {
            cpu::dropout(x.storage(), keep as f32, seed, y, row)
        })
    }

    fn fused_rope(
        x: FlexTensor,
        cos: FlexTensor,
        sin: FlexTensor,
        batch: usize,
        heads: usize,
    ) -> FlexTensor {
        let (x, cos, sin) = (f32s(&x), f32s(&cos), f32s(&sin));
        let [t, hd] = [dims(&cos)[0], dims(&cos)[1]];
        out(vec![batch, heads, t, hd], |y| {
            cpu::rope(
                x.storage(),
                cos.storage(),
                sin.storage(),
                [batch, t, heads, hd],
                y,
            )
        })
    }

    fn fused_rope_backward(dy: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let (dy, cos, sin) = (f32s(&dy), f32s(&cos), f32s(&sin));
        let [b, h, t, hd] = [dims(&dy)[0], dims(&dy)[1], dims(&dy)[2], dims(&dy)[3]];
        out(vec![b * t, h * hd], |dx| {
            cpu::rope_backward(
                dy.storage(),
                cos.storage(),
                sin.storage(),
                [b, t, h, hd],
                dx,
            )
        })
    }

    fn fused_causal_softmax(
        scores: FlexTensor,
        seq: usize,
        start: usize,
        scale: f64,
    ) -> FlexTensor {
        let s = f32s(&scores);
        let shape = dims(&s);
        let keys = *shape.last().unwrap_or(&1);
        out(shape, |p| {
            cpu::causal_softmax(s.storage(), keys, seq, start, scale as f32, p)
        })
    }

    fn fused_causal_softmax_backward(
        probs: FlexTensor,
        dprobs: FlexTensor,
        scale: f64,
    ) -> FlexTensor {
        let (p, dp) = (f32s(&probs), f32s(&dprobs));
        let shape = dims(&p);
        let keys = *shape.last().unwrap_or(&1);
        out(shape, |ds| {
            cpu::causal_softmax_backward(p.storage(), dp.storage(), keys, scale as f32, ds)
        })
    }

    fn fused_log_sum_exp(logits: FlexTensor) -> FlexTensor {
        let x = f32s(&logits);
        let [rows, vocab] = [dims(&x)[0], dims(&x)[1]];
        out(vec![rows], |o| cpu::log_sum_exp(x.storage(), vocab, o))
    }

    fn fused_cross_entropy(logits: FlexTensor, targets: FlexTensor, lse: FlexTensor) -> FlexTensor {
        let (x, lse) = (f32s(&logits), f32s(&lse));
        let vocab = dims(&x)[1];
        let loss = cpu::cross_entropy(x.storage(), vocab, &indices(&targets), lse.storage());
        out(vec![1], |o| o[0] = loss)
    }

    fn fused_cross_entropy_backward(
        logits: FlexTensor,
        targets: FlexTensor,
        lse: FlexTensor,
        dloss: FlexTensor,
    ) -> FlexTensor {
        let (x, lse, g) = (f32s(&logits), f32s(&lse), f32s(&dloss));
        let shape = dims(&x);
        let vocab = shape[1];
        let g = g.storage::<f32>()[0];
        out(shape, |dx| {
            cpu::cross_entropy_backward(
                x.storage(),
                vocab,
                &indices(&targets),
                lse.storage(),
                g,
                dx,
            )
        })
    }

    fn fused_linear_cross_entropy(
        h: FlexTensor,
        w: FlexTensor,
        targets: FlexTensor,
        block_rows: usize,
        int16: bool,
    ) -> FlexTensor {
        let (loss, _) = linear_cross_entropy(h, Head::new(w, int16), &targets, block_rows, false);
        out(vec![1], |o| o[0] = loss)
    }

    fn fused_linear_cross_entropy_with_grad(
        h: FlexTensor,
        w: FlexTensor,
        targets: FlexTensor,
        block_rows: usize,
        int16: bool,
    ) -> (FlexTensor, FlexTensor) {
        let (loss, dh) = linear_cross_entropy(h, Head::new(w, int16), &targets, block_rows, true);
        let dh = dh.unwrap_or_else(|| FlexTensor::empty(Shape::from(vec![0, 0]), DType::F32));
        (out(vec![1], |o| o[0] = loss), dh)
    }

    fn fused_scale(x: FlexTensor, g: FlexTensor) -> FlexTensor {
        let (x, g) = (f32s(&x), f32s(&g));
        let g = g.storage::<f32>().first().copied().unwrap_or(1.0);
        out(dims(&x), |o| {
            for (o, &v) in o.iter_mut().zip(x.storage::<f32>()) {
                *o = v * g;
            }
        })
    }

    fn fused_frozen_matmul(x: FlexTensor, w: FlexTensor, int16: bool) -> FlexTensor {
        Head::new(Flex::float_transpose(w), int16).logits(widen(&x))
    }

    fn fused_frozen_matmul_t(x: FlexTensor, w: FlexTensor, int16: bool) -> FlexTensor {
        Head::new(w, int16).logits(widen(&x))
    }
}

/// t in f32 (t itself when it is). An f16 tensor that spans its storage (the model's weight, or a
/// transposed view of it) is widened whole and keeps its layout, so that a view stays the same
/// view (gemm reads strides); a part of one is copied out first.
fn widen(t: &FlexTensor) -> FlexTensor {
    match t.dtype() {
        DType::F32 => t.clone(),
        DType::F16 if t.storage::<half::f16>().len() != t.layout().num_elements() => {
            widen(&t.to_contiguous())
        }
        DType::F16 => {
            let src = t.storage::<half::f16>();
            let mut wide = FlexTensor::empty(Shape::from(vec![src.len()]), DType::F32);
            cpu::widen_f16(src, wide.storage_mut());
            wide.with_layout(t.layout().clone())
        }
        _ => FlexTensor::from_data(t.clone().into_data().convert::<f32>()),
    }
}

/// The mean cross-entropy of h · wᵀ against `targets`, a block of rows at a time, and with
/// `with_grad` its gradient for h: per block, (softmax - onehot) / rows · w, from the block's
/// logits while they are at hand, so backward has nothing left to recompute.
fn linear_cross_entropy(
    h: FlexTensor,
    head: Head,
    targets: &FlexTensor,
    block_rows: usize,
    with_grad: bool,
) -> (f32, Option<FlexTensor>) {
    let block_rows = block_rows.max(1);
    let h = f32s(&h);
    let [rows, d] = [dims(&h)[0], dims(&h)[1]];
    let targets = indices(targets);
    let mut total = 0.0f64;
    let mut dh = with_grad.then(|| vec![0.0f32; rows * d]);
    for r0 in (0..rows).step_by(block_rows) {
        let n = block_rows.min(rows - r0);
        let block = h.storage::<f32>()[r0 * d..(r0 + n) * d].to_vec();
        let block = FlexTensor::from_data(TensorData::new(block, [n, d]));
        let mut logits = head.logits(block);
        let vocab = head.vocab;
        let block_targets = &targets[r0..r0 + n];
        let mut lse = vec![0.0f32; n];
        cpu::log_sum_exp(logits.storage(), vocab, &mut lse);
        total += f64::from(cpu::cross_entropy(
            logits.storage(),
            vocab,
            block_targets,
            &lse,
        )) * n as f64;
        if let Some(dh) = dh.as_mut() {
            cpu::cross_entropy_grad_in_place(
                logits.storage_mut(),
                vocab,
                block_targets,
                &lse,
                1.0 / rows as f32,
            );
            let g = head.grad(logits);
            dh[r0 * d..(r0 + n) * d].copy_from_slice(g.storage());
        }
    }
    let loss = (total / rows.max(1) as f64) as f32;
    let dh = dh.map(|dh| FlexTensor::from_data(TensorData::new(dh, [rows, d])));
    (loss, dh)
}

/// Vocabulary rows of an f16 head widened at a time: `[4096, 576]` is 9 MiB of f32 for SmolLM2,
/// where its whole head would be 108 MiB (once per shard running the loss, or per token
/// generated: the page's first sample had put 216 MiB on its peak).
pub(super) const HEAD_CHUNK: usize = 4096;

/// A frozen weight w `[vocab, d]` in a product h · wᵀ: the LM head in the fused loss, and every
/// [`FusedOps::fused_frozen_matmul`] (w a transposed view there). An f32 w is used whole, as it
/// is stored (a transposed Linear weight is read with its strides, not copied each step); an f16
/// w is widened [`HEAD_CHUNK`] rows at a time, so that a head never exists whole in f32 (a
/// projection's weight, fewer rows, is one chunk).
struct Head {
    w: FlexTensor,
    vocab: usize,
    /// An f16 w's products (of [`INT16_MIN_ROWS`] rows or more) in 16-bit integers.
    int16: bool,
}

impl Head {
    fn new(w: FlexTensor, int16: bool) -> Self {
        let vocab = dims(&w)[0];
        Self { w, vocab, int16 }
    }

    /// block `[n, d]` · wᵀ -> `[n, vocab]`, contiguous.
    fn logits(&self, block: FlexTensor) -> FlexTensor {
        let rows = dims(&block)[0];
        if self.int16(rows) {
            return self.int16_logits(&f32s(&block));
        }
        if self.w.dtype() == DType::F16 && rows < INT16_MIN_ROWS {
            return self.few_rows_logits(&f32s(&block));
        }
        if self.whole() {
            let w = Flex::float_transpose(widen(&self.w));
            return f32s(&Flex::float_matmul(block, w));
        }
        let (n, vocab) = (dims(&block)[0], self.vocab);
        let mut logits = FlexTensor::empty(Shape::from(vec![n, vocab]), DType::F32);
        for (v0, len, wc) in self.chunks() {
            let part = f32s(&Flex::float_matmul(
                block.clone(),
                Flex::float_transpose(wc),
            ));
            let dst = logits.storage_mut::<f32>();
            for (r, src) in part.storage::<f32>().chunks(len).enumerate() {
                dst[r * vocab + v0..r * vocab + v0 + len].copy_from_slice(src);
            }
        }
        logits
    }

    /// Whether w is used in one piece: f32 as it is, or f16 of at most one chunk, widened whole.
    fn whole(&self) -> bool {
        self.w.dtype() == DType::F32 || self.vocab <= HEAD_CHUNK
    }

    /// The head's rows `v0..v0 + len`, [`HEAD_CHUNK`] at a time, each widened to f32.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize, FlexTensor)> + '_ {
        (0..self.vocab).step_by(HEAD_CHUNK).map(|v0| {
            let len = HEAD_CHUNK.min(self.vocab - v0);
            (v0, len, widen(&self.w.narrow(0, v0, len)))
        })
    }

    /// g `[n, vocab]` · w -> `[n, d]`, contiguous.
    fn grad(&self, g: FlexTensor) -> FlexTensor {
        if self.int16(dims(&g)[0]) {
            return self.int16_grad(&f32s(&g));
        }
        if self.whole() {
            return f32s(&Flex::float_matmul(g, widen(&self.w)));
        }
        let mut sum: Option<FlexTensor> = None;
        for (v0, len, wc) in self.chunks() {
            let part = Flex::float_matmul(g.narrow(1, v0, len), wc);
            sum = Some(match sum {
                None => part,
                Some(sum) => Flex::float_add(sum, part),
            });
        }
        f32s(&sum.unwrap_or_else(|| {
            FlexTensor::zeros(Shape::from(vec![dims(&g)[0], dims(&self.w)[1]]), DType::F32)
        }))
    }
}

impl Head {
    /// [`Self::logits`] for a few rows (a generated token's) and an f16 w: [`cpu::f16_few_rows`],
    /// which reads w once instead of widening it.
    fn few_rows_logits(&self, x: &FlexTensor) -> FlexTensor {
        let w = if self.w.layout().strides().contains(&1) {
            self.w.clone()
        } else {
            self.w.to_contiguous()
        };
        let (rows, d) = (dims(x)[0], dims(x)[1]);
        let layout = w.layout();
        let view = cpu::F16View {
            bits: {
                use half::slice::HalfFloatSliceExt;
                w.storage::<half::f16>().reinterpret_cast()
            },
            start: layout.start_offset(),
            rows: self.vocab,
            cols: d,
            row_stride: layout.strides()[0] as usize,
            col_stride: layout.strides()[1] as usize,
        };
        out(vec![rows, self.vocab], |o| {
            cpu::f16_few_rows(x.storage::<f32>(), rows, view, o)
        })
    }
}

/// Rows of a's block per task in the int16 products: a multiple of the kernel's 4-row tile, and
/// 16 tasks for a batch of 4 x 128 tokens (the pool's threads balance them).
const INT16_BLOCK_ROWS: usize = 32;

impl Head {
    /// Whether this product runs in 16-bit integers ([`super::FrozenProducts::Int16`]).
    fn int16(&self, rows: usize) -> bool {
        self.int16 && self.w.dtype() == DType::F16 && rows >= INT16_MIN_ROWS
    }

    /// [`Self::logits`] in 16-bit integers, [`HEAD_CHUNK`] of w's rows at a time.
    fn int16_logits(&self, x: &FlexTensor) -> FlexTensor {
        let (n, d, vocab) = (dims(x)[0], dims(x)[1], self.vocab);
        let mut logits = FlexTensor::empty(Shape::from(vec![n, vocab]), DType::F32);
        for v0 in (0..vocab).step_by(HEAD_CHUNK) {
            let len = HEAD_CHUNK.min(vocab - v0);
            let b = Flex::float_transpose(self.w.narrow(0, v0, len));
            let a = (x.storage::<f32>(), d);
            int16_product(a, &b, &mut logits.storage_mut()[v0..], vocab, false);
        }
        logits
    }

    /// [`Self::grad`] in 16-bit integers, [`HEAD_CHUNK`] of w's rows at a time, summed.
    fn int16_grad(&self, g: &FlexTensor) -> FlexTensor {
        let (n, vocab) = (dims(g)[0], self.vocab);
        let d = dims(&self.w)[1];
        let mut dh = FlexTensor::zeros(Shape::from(vec![n, d]), DType::F32);
        for v0 in (0..vocab).step_by(HEAD_CHUNK) {
            let len = HEAD_CHUNK.min(vocab - v0);
            let a = (&g.storage::<f32>()[v0..], vocab);
            int16_product(a, &self.w.narrow(0, v0, len), dh.storage_mut(), d, v0 > 0);
        }
        dh
    }
}

/// c = a · b in 16-bit integers ([`int16`]): a `[m, k]` f32 rows (`a.0`, row i at `i * a.1`;
/// m is c's rows), b `[k, n]` an f16 matrix or a view of one with a unit stride along either
/// dimension. b is quantized per row of its storage and packed (a panel per task), then a is
/// multiplied a block of rows per task, into c (row i at `i * c_stride`; added to what is there
/// with `accumulate`). Reading b along its storage's rows keeps every read contiguous.
fn int16_product(
    a: (&[f32], usize),
    b: &FlexTensor,
    c: &mut [f32],
    c_stride: usize,
    accumulate: bool,
) {
    let b = if b.layout().strides().contains(&1) {
        b.clone()
    } else {
        b.to_contiguous()
    };
    let ([k, n], layout) = ([dims(&b)[0], dims(&b)[1]], b.layout());
    let (s0, s1) = (layout.strides()[0] as usize, layout.strides()[1] as usize);
    // w, the matrix packed: b itself ([k, n], rows along s0) or bᵀ ([n, k], rows along s1).
    let transposed = s1 != 1;
    let (rows, cols, stride) = if transposed { (n, k, s1) } else { (k, n, s0) };
    let src = {
        use half::slice::HalfFloatSliceExt;
        b.storage::<half::f16>().reinterpret_cast()
    };
    let start = layout.start_offset();
    let row = |r: usize| &src[start + r * stride..start + r * stride + cols];
    let mut scales = vec![0f32; rows];
    cpu::for_rows(&mut scales, 1, cols, |r, s| s[0] = int16::f16_scale(row(r)));
    let packer = int16::Packer::new(rows, cols, transposed, scales);
    let mut data = vec![0i16; packer.panels() * packer.panel_len()];
    cpu::for_chunks(&mut data, packer.panel_len(), |p, panel| {
        packer.fill_f16(p, panel, row)
    });
    let (packed, a_scale) = packer.finish(data);
    let lhs = int16::Lhs {
        data: a.0,
        stride: a.1,
        scale: &a_scale,
    };
    cpu::for_row_blocks(c, c_stride, INT16_BLOCK_ROWS, |r0, rows, c| {
        int16::matmul(&lhs, &packed, r0..r0 + rows, c, c_stride, accumulate)
    });
}

// ---- autodiff over it -------------------------------------------------------------------------

type P<B> = <B as burn::backend::BackendTypes>::FloatTensorPrimitive;
type PI<B> = <B as burn::backend::BackendTypes>::IntTensorPrimitive;

#[derive(Debug)]
struct RmsNormBackward;

impl<B: Backend + FusedOps> Backward<B, 2> for RmsNormBackward {
    type State = (P<B>, P<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pg] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, gamma, eps) = ops.state;
        if let Some(node) = pg {
            let dg = B::fused_rms_norm_backward_gamma(x.clone(), eps, dy.clone());
            grads.register::<B>(node.id, dg);
        }
        if let Some(node) = px {
            grads.register::<B>(node.id, B::fused_rms_norm_backward(x, gamma, eps, dy));
        }
    }
}

#[derive(Debug)]
struct SiluMulBackward;

impl<B: Backend + FusedOps> Backward<B, 2> for SiluMulBackward {
    type State = (P<B>, P<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pg, pu] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let both = B::fused_silu_mul_backward(gate, up, dy);
        let shape = both.shape();
        let one: Vec<usize> = shape.iter().skip(1).copied().collect();
        let take = |i: usize| {
            let mut ranges: Vec<burn::tensor::Slice> = vec![burn::tensor::Slice::from(i..i + 1)];
            ranges.extend(one.iter().map(|&d| burn::tensor::Slice::from(0..d)));
            B::float_reshape(
                B::float_slice(both.clone(), &ranges),
                Shape::from(one.clone()),
            )
        };
        if let Some(node) = pg {
            grads.register::<B>(node.id, take(0));
        }
        if let Some(node) = pu {
            grads.register::<B>(node.id, take(1));
        }
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl<B: Backend + FusedOps> Backward<B, 1> for DropoutBackward {
    type State = (P<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (seed, keep) = ops.state;
        if let Some(node) = px {
            // d(x * m / keep) / dx = m / keep: the same mask, from its seed.
            grads.register::<B>(node.id, B::fused_dropout_with_seed(dy, keep, seed));
        }
    }
}

#[derive(Debug)]
struct RopeBackward;

impl<B: Backend + FusedOps> Backward<B, 1> for RopeBackward {
    type State = (P<B>, P<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = px {
            grads.register::<B>(node.id, B::fused_rope_backward(dy, cos, sin));
        }
    }
}

#[derive(Debug)]
struct CausalSoftmaxBackward;

impl<B: Backend + FusedOps> Backward<B, 1> for CausalSoftmaxBackward {
    type State = (P<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [ps] = ops.parents;
        let dp = grads.consume::<B>(&ops.node);
        let (probs, scale) = ops.state;
        if let Some(node) = ps {
            grads.register::<B>(node.id, B::fused_causal_softmax_backward(probs, dp, scale));
        }
    }
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl<B: Backend + FusedOps> Backward<B, 1> for CrossEntropyBackward {
    type State = (P<B>, PI<B>, P<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pl] = ops.parents;
        let dloss = grads.consume::<B>(&ops.node);
        let (logits, targets, lse) = ops.state;
        if let Some(node) = pl {
            let dx = B::fused_cross_entropy_backward(logits, targets, lse, dloss);
            grads.register::<B>(node.id, dx);
        }
    }
}

/// The fused LM-head loss: its gradient for h was computed with the loss; backward scales it.
#[derive(Debug)]
struct LinearCrossEntropyBackward;

impl<B: Backend + FusedOps> Backward<B, 1> for LinearCrossEntropyBackward {
    type State = P<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [ph] = ops.parents;
        let dloss = grads.consume::<B>(&ops.node);
        if let Some(node) = ph {
            grads.register::<B>(node.id, B::fused_scale(ops.state, dloss));
        }
    }
}

/// A product with a frozen weight: the gradient for x is dy · wᵀ, w widened again.
#[derive(Debug)]
struct FrozenMatmulBackward;

impl<B: Backend + FusedOps> Backward<B, 1> for FrozenMatmulBackward {
    type State = (P<B>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (w, int16) = ops.state;
        if let Some(node) = px {
            grads.register::<B>(node.id, B::fused_frozen_matmul_t(dy, w, int16));
        }
    }
}

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let out = B::fused_rms_norm(x.primitive().clone(), gamma.primitive().clone(), eps);
        match RmsNormBackward
            .prepare::<C>([x.node(), gamma.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((x.into_primitive(), gamma.into_primitive(), eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::fused_silu_mul(gate.primitive().clone(), up.primitive().clone());
        match SiluMulBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((gate.into_primitive(), up.into_primitive()), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_dropout(x: FloatTensor<Self>, keep: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, seed) = B::fused_dropout(x.primitive().clone(), keep);
        let out = match DropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((seed.clone(), keep), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, constant::<B, C>(seed))
    }

    fn fused_dropout_with_seed(
        x: FloatTensor<Self>,
        keep: f64,
        seed: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_dropout_with_seed(
            x.into_primitive(),
            keep,
            seed.into_primitive(),
        ))
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        batch: usize,
        heads: usize,
    ) -> FloatTensor<Self> {
        let out = B::fused_rope(
            x.primitive().clone(),
            cos.primitive().clone(),
            sin.primitive().clone(),
            batch,
            heads,
        );
        match RopeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((cos.into_primitive(), sin.into_primitive()), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        seq: usize,
        start: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        let out = B::fused_causal_softmax(scores.primitive().clone(), seq, start, scale);
        match CausalSoftmaxBackward
            .prepare::<C>([scores.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((out.clone(), scale), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_log_sum_exp(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only used inside `fused_cross_entropy`, whose backward covers it.
        constant::<B, C>(B::fused_log_sum_exp(logits.into_primitive()))
    }

    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let lse = lse.into_primitive();
        let out = B::fused_cross_entropy(logits.primitive().clone(), targets.clone(), lse.clone());
        match CrossEntropyBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((logits.into_primitive(), targets, lse), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_linear_cross_entropy(
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        block_rows: usize,
        int16: bool,
    ) -> FloatTensor<Self> {
        // w is frozen (the caller checks): only h is differentiated.
        let w = w.into_primitive();
        match LinearCrossEntropyBackward
            .prepare::<C>([h.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, dh) = B::fused_linear_cross_entropy_with_grad(
                    h.into_primitive(),
                    w,
                    targets,
                    block_rows,
                    int16,
                );
                prep.finish(dh, loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_linear_cross_entropy(
                h.into_primitive(),
                w,
                targets,
                block_rows,
                int16,
            )),
        }
    }

    // Backward passes are not themselves differentiated: they run on the inner backend.
    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_rms_norm_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            eps,
            dy.into_primitive(),
        ))
    }

    fn fused_rms_norm_backward_gamma(
        x: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_rms_norm_backward_gamma(
            x.into_primitive(),
            eps,
            dy.into_primitive(),
        ))
    }

    fn fused_silu_mul_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_silu_mul_backward(
            gate.into_primitive(),
            up.into_primitive(),
            dy.into_primitive(),
        ))
    }

    fn fused_rope_backward(
        dy: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_rope_backward(
            dy.into_primitive(),
            cos.into_primitive(),
            sin.into_primitive(),
        ))
    }

    fn fused_causal_softmax_backward(
        probs: FloatTensor<Self>,
        dprobs: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_causal_softmax_backward(
            probs.into_primitive(),
            dprobs.into_primitive(),
            scale,
        ))
    }

    fn fused_cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        dloss: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_cross_entropy_backward(
            logits.into_primitive(),
            targets,
            lse.into_primitive(),
            dloss.into_primitive(),
        ))
    }

    fn fused_linear_cross_entropy_with_grad(
        h: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        block_rows: usize,
        int16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (loss, dh) = B::fused_linear_cross_entropy_with_grad(
            h.into_primitive(),
            w.into_primitive(),
            targets,
            block_rows,
            int16,
        );
        (constant::<B, C>(loss), constant::<B, C>(dh))
    }

    fn fused_frozen_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        int16: bool,
    ) -> FloatTensor<Self> {
        // w is frozen (the caller checks): the state keeps the model's own tensor, in its
        // own type, and no widened copy outlives the product. The backward pass computes as
        // the forward pass did (`int16`), whoever calls backward.
        let w = w.into_primitive();
        let out = B::fused_frozen_matmul(x.primitive().clone(), w.clone(), int16);
        match FrozenMatmulBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((w, int16), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_frozen_matmul_t(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        int16: bool,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_frozen_matmul_t(
            x.into_primitive(),
            w.into_primitive(),
            int16,
        ))
    }

    fn fused_scale(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        constant::<B, C>(B::fused_scale(x.into_primitive(), g.into_primitive()))
    }
}

/// An autodiff tensor that is not tracked (a constant).
fn constant<B: Backend, C: CheckpointStrategy>(t: P<B>) -> FloatTensor<Autodiff<B, C>> {
    <Autodiff<B, C> as AutodiffBackend>::from_inner(t)
}
