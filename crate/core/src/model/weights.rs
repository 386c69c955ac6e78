//! What every family's loader and head use: frozen parameters from host tensors, 1-D weights in
//! the `hf_tensors` form, and the LM head (its own, or tied to the token embedding).

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::formats::HostTensor;
use crate::lora::LoraLinear;

/// A 2-D host tensor on `device`.
pub(crate) fn to_tensor2(t: HostTensor, device: &Device) -> Tensor<2> {
    let shape = [t.shape[0], t.shape[1]];
    Tensor::<2>::from_data(TensorData::new(t.data, shape), device)
}

/// A 1-D host tensor of `n` values on `device`.
pub(crate) fn to_tensor1(t: HostTensor, n: usize, device: &Device) -> Tensor<1> {
    Tensor::<1>::from_data(TensorData::new(t.data, [n]), device)
}

/// A parameter that never trains (every base weight).
pub(crate) fn frozen_param<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t).set_require_grad(false)
}

/// A 1-D weight as `hf_tensors` gives it: `[1, n]`, with the shape `[n]` to write.
pub(crate) fn hf_row(t: Tensor<1>) -> (Vec<usize>, Tensor<2>) {
    let [n] = t.dims();
    (vec![n], t.reshape([1, n]))
}

/// Next-token logits from final hidden rows: the model's own head, or the token embedding
/// (`[vocab, hidden]`) when the head is tied to it.
///
/// # Shapes
/// - h: `[batch * seq, hidden]` -> `[batch, seq, vocab]`
pub(crate) fn lm_logits(
    h: Tensor<2>,
    head: Option<&LoraLinear>,
    embedding: &Param<Tensor<2>>,
    [b, t]: [usize; 2],
) -> Tensor<3> {
    let logits = match head {
        Some(head) => head.forward(h),
        None => h.matmul(embedding.val().transpose()),
    };
    let [_, vocab] = logits.dims();
    logits.reshape([b, t, vocab])
}

/// Mean next-token cross-entropy of the head's logits from final hidden rows, against `targets`:
/// the head (its own, or the tied embedding) goes into the loss as a weight, so that the CPU
/// backend never holds the `[batch * seq, vocab]` logits whole ([`crate::kernels::linear_cross_entropy`],
/// `block_rows` rows at a time).
///
/// # Shapes
/// - h: `[batch * seq, hidden]`, targets: `[batch, seq]` -> `[1]`
pub(crate) fn lm_loss(
    h: Tensor<2>,
    head: Option<&LoraLinear>,
    embedding: &Param<Tensor<2>>,
    targets: Tensor<2, Int>,
    block_rows: usize,
) -> Tensor<1> {
    let [b, t] = targets.dims();
    let targets = targets.reshape([b * t]);
    let w = match head {
        // burn's Linear stores `[d_in, d_out]`: the head as `[vocab, hidden]` is its transpose.
        Some(head) if head.lora.is_none() && head.base.bias.is_none() => {
            head.base.weight.val().transpose()
        }
        Some(head) => return crate::kernels::cross_entropy(head.forward(h), targets),
        None => embedding.val(),
    };
    crate::kernels::linear_cross_entropy(h, w, targets, block_rows)
}
