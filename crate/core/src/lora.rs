//! LoRA: h = W0 x + s * B(A(dropout(x))), with W0 frozen and only A and B trained.
//!
//! Every projection of a model is a [`LoraLinear`]: a frozen [`Linear`] plus an optional LoRA
//! branch. Which parameters train is decided here, in one place: the base never does.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{DType, Device, Tensor};

use crate::kernels::FrozenProducts;

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
    /// LoRA's alpha: the branch is scaled by alpha / r (alpha / sqrt(r) with rsLoRA). Kept with
    /// the branch, so that an export or a continued run reads the settings from the model itself.
    pub alpha: f64,
    pub use_rslora: bool,
}

impl LoraBranch {
    /// A branch from given A^T [d_in, r] and B^T [r, d_out], both trainable, with the rank,
    /// alpha, rsLoRA and dropout of `cfg` (the rank is A's).
    pub fn from_tensors(a: Tensor<2>, b: Tensor<2>, cfg: &LoraConfig) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            alpha: cfg.alpha,
            use_rslora: cfg.use_rslora,
        }
    }

    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.rank() as f64;
        if self.use_rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }

    /// The settings of this branch (targets empty, init unknown: Kaiming).
    pub fn settings(&self) -> LoraConfig {
        LoraConfig {
            r: self.rank(),
            alpha: self.alpha,
            dropout: self.dropout.prob,
            targets: Vec::new(),
            use_rslora: self.use_rslora,
            init: LoraInit::Kaiming,
        }
    }

    /// # Shapes
    /// - x: `[..., d_in]` -> `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // x -> A -> B: never forms the d_in x d_out product B A.
        let x = self.dropout(x);
        let a = self.a.val().unsqueeze::<D>();
        let b = self.b.val().unsqueeze::<D>();
        x.matmul(a).matmul(b).mul_scalar(self.scale())
    }

    pub fn rank(&self) -> usize {
        self.a.shape().dims::<2>()[1]
    }

    /// burn's `Dropout` rule (only while training, on an autodiff device, and not when frozen)
    /// with the fused kernel (`kernels::dropout`: one pass, a seed instead of a stored mask).
    fn dropout<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let p = self.dropout.prob;
        if p == 0.0 || !self.dropout.training.is_enabled() || !x.device().is_autodiff() {
            return x;
        }
        let shape = x.dims();
        let d = shape[D - 1];
        let rows = x.shape().num_elements() / d.max(1);
        crate::kernels::dropout(x.reshape([rows, d]), p).reshape(shape)
    }
}

/// A linear projection with a frozen base weight and an optional LoRA branch.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// W0 as burn stores it: `[d_in, d_out]`.
    pub base: Linear,
    pub lora: Option<LoraBranch>,
    /// How a product with W0 kept in f16 runs on the CPU (the model's choice:
    /// `CausalLM::with_products`).
    #[module(skip)]
    pub products: FrozenProducts,
}

impl LoraLinear {
    /// A projection without LoRA, from a weight in burn layout `[d_in, d_out]`.
    pub fn frozen(weight: Tensor<2>) -> Self {
        Self::frozen_with_bias(weight, None)
    }

    /// [`Self::frozen`] with a (frozen) bias `[d_out]`.
    pub fn frozen_with_bias(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            base: Linear {
                weight: Param::from_tensor(weight).set_require_grad(false),
                bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            },
            lora: None,
            products: FrozenProducts::platform(),
        }
    }

    /// # Shapes
    /// - x: `[..., d_in]` -> `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => self.base_forward(x),
            Some(lora) => self.base_forward(x.clone()) + lora.forward(x),
        }
    }

    /// The frozen base alone: burn's Linear, or with a base kept in f16 the product that widens
    /// the weight for itself ([`crate::kernels::frozen_matmul`]).
    ///
    /// # Shapes
    /// - x: `[..., d_in]` -> `[..., d_out]`
    fn base_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.base.weight.val();
        if w.dtype() == DType::F32 {
            return self.base.forward(x);
        }
        let mut shape = x.dims();
        let [d_in, d_out] = w.dims();
        let rows = shape[..D - 1].iter().product();
        let y = crate::kernels::frozen_matmul(x.reshape([rows, d_in]), w, self.products);
        let y = match &self.base.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        };
        shape[D - 1] = d_out;
        y.reshape(shape)
    }

    /// `[d_in, d_out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.base.weight.shape().dims()
    }

    pub fn device(&self) -> Device {
        self.base.weight.val().device()
    }
}

/// How LoRA A is initialised (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// PEFT's default (`true`): kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in)).
    Kaiming,
    /// The paper's (`"gaussian"`): N(0, 1/r).
    Gaussian,
}

/// Which projections get LoRA, and how.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`q_proj`, ...) or `["all-linear"]`; empty: the model family's defaults.
    pub targets: Vec<String>,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    pub init: LoraInit,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            // The family's defaults (the LoRA paper's: q_proj, v_proj on Llama; c_attn on GPT-2).
            targets: Vec::new(),
            use_rslora: false,
            init: LoraInit::Kaiming,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks rank, alpha and dropout (rank 0 would divide by zero, dropout 1 drops everything).
    pub fn validate(&self) -> crate::Result<()> {
        let max = crate::limits::MAX_RANK;
        if !(1..=max).contains(&self.r) {
            return Err(crate::Error::Invalid(format!(
                "lora.r (the rank) is {}; it must be between 1 and {max}",
                self.r
            )));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(crate::Error::Invalid(format!(
                "lora.alpha is {}; it must be a positive number",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(crate::Error::Invalid(format!(
                "lora.dropout is {}; it must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// The module names of `model` to adapt, in the model's order.
    pub fn resolve_targets(
        &self,
        model: &crate::model::CausalLM,
    ) -> crate::Result<Vec<&'static str>> {
        self.validate()?;
        let available = model.lora_targets();
        if self.targets.is_empty() {
            return Ok(model.default_targets().to_vec());
        }
        for t in &self.targets {
            if t != "all-linear" && !available.contains(&t.as_str()) {
                return Err(crate::Error::Invalid(format!(
                    "unknown LoRA target `{t}` (this model has: {}, or all-linear)",
                    available.join(", ")
                )));
            }
        }
        if self.targets.iter().any(|t| t == "all-linear") {
            return Ok(available.to_vec());
        }
        Ok(available
            .iter()
            .copied()
            .filter(|a| self.targets.iter().any(|t| t == a))
            .collect())
    }

    /// Trainable parameters for projections of the given `[d_in, d_out]` sizes.
    pub fn num_parameters(&self, dims: &[[usize; 2]]) -> usize {
        dims.iter().map(|[i, o]| self.r * (i + o)).sum()
    }
}

/// A fresh branch for a `[d_in, d_out]` projection: A from `cfg.init`, B = 0. Drawn on the host
/// with the crate's RNG, so a seed gives the same A on every backend.
pub fn init_branch(
    d_in: usize,
    d_out: usize,
    cfg: &LoraConfig,
    rng: &mut crate::rng::Rng,
    device: &Device,
) -> LoraBranch {
    let r = cfg.r;
    let a: Vec<f32> = match cfg.init {
        LoraInit::Kaiming => {
            let bound = 1.0 / (d_in as f64).sqrt();
            (0..d_in * r)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        }
        LoraInit::Gaussian => {
            let std = 1.0 / r as f64;
            (0..d_in * r).map(|_| (normal(rng) * std) as f32).collect()
        }
    };
    let a = Tensor::<2>::from_data(burn::tensor::TensorData::new(a, [d_in, r]), device);
    let b = Tensor::<2>::zeros([r, d_out], device);
    LoraBranch::from_tensors(a, b, cfg)
}

/// Box-Muller.
fn normal(rng: &mut crate::rng::Rng) -> f64 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Adds a fresh LoRA branch to every targeted projection of `model` (replacing any it had);
/// returns the HF module paths adapted.
pub fn attach(
    model: &mut crate::model::CausalLM,
    cfg: &LoraConfig,
    seed: u64,
) -> crate::Result<Vec<String>> {
    let targets = cfg.resolve_targets(model)?;
    let mut rng = crate::rng::Rng::new(seed);
    let mut adapted = Vec::new();
    for (path, name, proj) in model.projections_mut() {
        if targets.contains(&name) {
            let [d_in, d_out] = proj.dims();
            let device = proj.device();
            proj.lora = Some(init_branch(d_in, d_out, cfg, &mut rng, &device));
            adapted.push(path);
        }
    }
    Ok(adapted)
}

/// Folds every branch into its base weight (W0 + s * A^T B^T in burn's layout) and removes it:
/// the merged model runs at base speed and is what a merged export writes.
pub fn merge(model: &mut crate::model::CausalLM) {
    for (_, _, proj) in model.projections_mut() {
        if let Some(lora) = proj.lora.take() {
            let delta = lora.a.val().matmul(lora.b.val()).mul_scalar(lora.scale());
            // Detached: on an autodiff device the sum is not a leaf, and a frozen weight must be.
            // In f32 whatever the base's type (a base kept in f16 is widened: the merged model
            // is what an export writes).
            let merged = (crate::kernels::f32(proj.base.weight.val()) + delta).detach();
            proj.base.weight = Param::from_tensor(merged).set_require_grad(false);
        }
    }
}

/// The LoRA settings of `model`'s branches, with its adapted module names as targets: what an
/// export writes. `None` without branches; an error when branches differ in rank, alpha, rsLoRA
/// or dropout (one adapter config cannot describe them).
pub fn settings_of(model: &crate::model::CausalLM) -> crate::Result<Option<LoraConfig>> {
    let mut found: Option<LoraConfig> = None;
    for (path, name, proj) in model.projections() {
        let Some(branch) = &proj.lora else { continue };
        let s = branch.settings();
        match &mut found {
            None => {
                found = Some(LoraConfig {
                    targets: vec![name.to_string()],
                    ..s
                })
            }
            Some(f) => {
                if (f.r, f.alpha, f.use_rslora, f.dropout)
                    != (s.r, s.alpha, s.use_rslora, s.dropout)
                {
                    return Err(crate::Error::Invalid(format!(
                        "{path} has LoRA rank {}, alpha {}, rsLoRA {}, dropout {}, unlike the \
                         model's other branches: one adapter config cannot describe them",
                        s.r, s.alpha, s.use_rslora, s.dropout
                    )));
                }
                if !f.targets.iter().any(|t| t == name) {
                    f.targets.push(name.to_string());
                }
            }
        }
    }
    // In the family's target order.
    if let Some(f) = &mut found {
        let order = model.lora_targets();
        f.targets
            .sort_by_key(|t| order.iter().position(|o| o == t).unwrap_or(usize::MAX));
    }
    Ok(found)
}
