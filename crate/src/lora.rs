//! LoRA: h = W0 x + s * B(A(dropout(x))), with W0 frozen and only A and B trained.
//!
//! Every projection of a model is a [`LoraLinear`]: a frozen [`Linear`] plus an optional LoRA
//! branch. Which parameters train is decided here, in one place: the base never does.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

/// The trainable low-rank branch.
///
/// Stored burn-style, as the transposes of PEFT's `lora_A.weight` [r, d_in] and
/// `lora_B.weight` [d_out, r], so that the forward pass is two plain matmuls.
#[derive(Module, Debug)]
pub struct LoraBranch {
    /// A^T: `[d_in, r]`.
    pub a: Param<Tensor<2>>,
    /// B^T: `[r, d_out]`; zero at initialisation so training starts at the base model.
    pub b: Param<Tensor<2>>,
    pub dropout: Dropout,
    /// alpha / r (or alpha / sqrt(r) with rsLoRA).
    pub scale: f64,
}

impl LoraBranch {
    /// A branch from given A^T [d_in, r] and B^T [r, d_out], both trainable.
    pub fn from_tensors(a: Tensor<2>, b: Tensor<2>, scale: f64, dropout: f64) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            dropout: DropoutConfig::new(dropout).init(),
            scale,
        }
    }

    /// # Shapes
    /// - x: `[..., d_in]` -> `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // x -> A -> B: never forms the d_in x d_out product B A.
        let x = self.dropout.forward(x);
        let a = self.a.val().unsqueeze::<D>();
        let b = self.b.val().unsqueeze::<D>();
        x.matmul(a).matmul(b).mul_scalar(self.scale)
    }

    pub fn rank(&self) -> usize {
        self.a.shape().dims::<2>()[1]
    }
}

/// A linear projection with a frozen base weight and an optional LoRA branch.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// W0 as burn stores it: `[d_in, d_out]`.
    pub base: Linear,
    pub lora: Option<LoraBranch>,
}

impl LoraLinear {
    /// A projection without LoRA, from a weight in burn layout `[d_in, d_out]`.
    pub fn frozen(weight: Tensor<2>) -> Self {
        Self {
            base: Linear {
                weight: Param::from_tensor(weight).set_require_grad(false),
                bias: None,
            },
            lora: None,
        }
    }

    /// # Shapes
    /// - x: `[..., d_in]` -> `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => self.base.forward(x),
            Some(lora) => self.base.forward(x.clone()) + lora.forward(x),
        }
    }

    /// `[d_in, d_out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.base.weight.shape().dims()
    }

    pub fn device(&self) -> Device {
        self.base.weight.val().device()
    }
}
