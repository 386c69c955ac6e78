//! What every family's loader and head use: frozen parameters from host tensors, 1-D weights in
//! the `hf_tensors` form, and the LM head (its own, or tied to the token embedding).

use burn::module::{ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::formats::HostTensor;
use crate::kernels::FrozenProducts;
use crate::lora::LoraLinear;

/// A 2-D host tensor on `device`.
pub(crate) fn to_tensor2(t: HostTensor, device: &Device) -> Tensor<2> {
    let shape = [t.shape[0], t.shape[1]];
    Tensor::<2>::from_data(TensorData::new(t.data, shape), device)
}

/// A frozen matrix of the base on `device`: with `f16` (where the device holds f16,
/// [`crate::device::holds_f16`], and when every value is within f16's range) kept in f16,
/// converted as it is read, so that the model never holds it in f32 beside its other matrices
/// ([`crate::model::CausalLM::with_base_in_f16`]).
pub(crate) fn matrix(t: HostTensor, device: &Device, f16: bool) -> Tensor<2> {
    // A NaN compares false: it stays f32, and the run's finiteness checks report it.
    let fits = |t: &HostTensor| t.data.iter().all(|x| x.abs() <= F16_MAX);
    if f16 && crate::device::holds_f16(device) && fits(&t) {
        to_tensor2(t, device).cast(FloatDType::F16)
    } else {
        to_tensor2(t, device)
    }
}

/// f16's largest finite value: a matrix with a larger one stays f32 (it would become infinite).
const F16_MAX: f32 = 65_504.0;

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
/// (`[vocab, hidden]`) when the head is tied to it, its products as `products` says.
///
/// # Shapes
/// - h: `[batch * seq, hidden]` -> `[batch, seq, vocab]`
pub(crate) fn lm_logits(
    h: Tensor<2>,
    head: Option<&LoraLinear>,
    embedding: &Param<Tensor<2>>,
    [b, t]: [usize; 2],
    products: FrozenProducts,
) -> Tensor<3> {
    let logits = match head {
        Some(head) => head.forward(h),
        None => crate::kernels::frozen_matmul(h, embedding.val().transpose(), products),
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
    products: FrozenProducts,
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
    crate::kernels::linear_cross_entropy(h, w, targets, block_rows, products)
}

/// Turns every frozen matrix of a model (projections, embeddings, the LM head) into f16, and
/// leaves the rest as it is: 1-D weights (norms, biases: small, and added or multiplied
/// element-wise in f32), LoRA's branches (trained in f32), and a matrix with a value beyond
/// f16's range (65,504), which would become infinite.
#[derive(Default)]
pub(crate) struct BaseToF16 {
    /// How deep inside a LoRA branch the mapper is (its `lora` field).
    in_lora: usize,
    /// Bytes the model no longer holds.
    pub saved: usize,
}

impl ModuleMapper for BaseToF16 {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        if name == "lora" || self.in_lora > 0 {
            self.in_lora += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.in_lora = self.in_lora.saturating_sub(1);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D != 2 || self.in_lora > 0 || param.is_require_grad() {
            return param;
        }
        let t = param.val();
        if t.dtype() != DType::F32 {
            return param;
        }
        let largest = t
            .abs()
            .max()
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap_or(0.0);
        // NaN too: it stays where it was, and the run's finiteness checks report it.
        if largest.is_nan() || largest > F16_MAX {
            return param;
        }
        self.saved += param.shape().num_elements() * 2;
        param.map(|t| t.cast(FloatDType::F16))
    }
}
