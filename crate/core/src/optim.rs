//! AdamW on the LoRA matrices, computed as `torch.optim.AdamW` does, with its state (the step
//! count and both moments of every matrix) kept under the matrices' HF names, so that a
//! checkpoint saves it and a resumed run continues bit for bit (see [`crate::checkpoint`]).
//!
//! burn's own AdamW keys its state by `ParamId`, which a reloaded model does not keep, and reads
//! its record back synchronously, which WebGPU in a browser cannot do.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::model::CausalLM;

/// The first and second moment of one matrix, on the training device (without autodiff).
#[derive(Debug, Clone)]
pub struct Moments {
    pub exp_avg: Tensor<2>,
    pub exp_avg_sq: Tensor<2>,
}

/// AdamW with decoupled weight decay.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    /// Updates taken so far (torch's `state["step"]`).
    pub steps: u64,
    /// Moments by matrix name (`model.layers.0.self_attn.q_proj.lora_A`).
    pub moments: BTreeMap<String, Moments>,
}

/// The names of a projection's two LoRA matrices.
pub fn matrix_names(path: &str) -> [String; 2] {
    [format!("{path}.lora_A"), format!("{path}.lora_B")]
}

impl AdamW {
    pub fn new(beta1: f64, beta2: f64, epsilon: f64, weight_decay: f64) -> Self {
        Self {
            beta1,
            beta2,
            epsilon,
            weight_decay,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update, at learning rate `lr`, of every LoRA matrix of `model` that has a gradient in
    /// `grads` (which it consumes):
    ///
    /// ```text
    /// p  <- p * (1 - lr * wd)
    /// m  <- b1 * m + (1 - b1) * g          v <- b2 * v + (1 - b2) * g^2
    /// p  <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    /// ```
    pub fn step(&mut self, lr: f64, model: &mut CausalLM, grads: &mut GradientsParams) {
        self.steps += 1;
        let t = self.steps as f64;
        let step_size = lr / (1.0 - self.beta1.powf(t));
        let bias_correction2_sqrt = (1.0 - self.beta2.powf(t)).sqrt();
        for (path, _, proj) in model.projections_mut() {
            let Some(lora) = proj.lora.as_mut() else {
                continue;
            };
            let [name_a, name_b] = matrix_names(&path);
            for (name, param) in [(name_a, &mut lora.a), (name_b, &mut lora.b)] {
                let Some(g) = grads.remove::<2>(param.id) else {
                    continue;
                };
                let strategy = param.val().gradient_checkpointing_strategy();
                let p = param.val().inner();
                let Moments {
                    exp_avg,
                    exp_avg_sq,
                } = self.moments.remove(&name).unwrap_or_else(|| Moments {
                    exp_avg: g.zeros_like(),
                    exp_avg_sq: g.zeros_like(),
                });
                let exp_avg =
                    exp_avg.mul_scalar(self.beta1) + g.clone().mul_scalar(1.0 - self.beta1);
                let exp_avg_sq =
                    exp_avg_sq.mul_scalar(self.beta2) + g.square().mul_scalar(1.0 - self.beta2);
                let denom = exp_avg_sq
                    .clone()
                    .sqrt()
                    .div_scalar(bias_correction2_sqrt)
                    .add_scalar(self.epsilon);
                let p = p.mul_scalar(1.0 - lr * self.weight_decay)
                    - exp_avg.clone().div(denom).mul_scalar(step_size);
                // Back on the autodiff device with the parameter's gradient-checkpointing strategy:
                // `from_inner` alone gives the default one, and burn refuses to mix them.
                let mut p = Tensor::from_inner(p);
                if let Some(strategy) = strategy {
                    p = p.with_gradient_checkpointing_strategy(strategy);
                }
                *param = Param::initialized(param.id, p.require_grad());
                self.moments.insert(
                    name,
                    Moments {
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
    }
}
