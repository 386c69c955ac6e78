//! The GPT-2 family (`GPT2LMHeadModel` in transformers: GPT-2, distilgpt2 and models of the same
//! layout): token and learned position embeddings, pre-LayerNorm blocks with one fused `c_attn`
//! projection for q|k|v, a `gelu_new` MLP, a final LayerNorm, and the LM head tied to the token
//! embedding. Every projection is a `Conv1D`, which stores its weight `[d_in, d_out]`: burn's
//! layout, so weights load as they are.

pub mod config;
pub mod gguf;

pub use config::Gpt2Config;

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};

use super::recompute::{self, Layers};
use super::weights::{frozen_param, hf_row, lm_logits, lm_loss, matrix, to_tensor1};
use super::{CausalLanguageModel, KvCache, Projection, ProjectionMut};
use crate::error::Result;
use crate::formats::{Checkpoint, HostTensor};
use crate::kernels::{self, FrozenProducts};
use crate::lora::LoraLinear;

/// The HF module tree of the projections, spelled once for both borrows.
macro_rules! projections {
    ($self:ident, $iter:ident, $($borrow:tt)+) => {{
        let mut out = Vec::new();
        for (l, block) in $self.transformer.h.$iter().enumerate() {
            let p = format!("transformer.h.{l}");
            let (attn, mlp) = ($($borrow)+ block.attn, $($borrow)+ block.mlp);
            out.push((format!("{p}.attn.c_attn"), "c_attn", $($borrow)+ attn.c_attn));
            out.push((format!("{p}.attn.c_proj"), "c_proj", $($borrow)+ attn.c_proj));
            out.push((format!("{p}.mlp.c_fc"), "c_fc", $($borrow)+ mlp.c_fc));
            out.push((format!("{p}.mlp.c_proj"), "c_proj", $($borrow)+ mlp.c_proj));
        }
        out
    }};
}

/// The projections LoRA may target (PEFT's names: `c_proj` is both the attention's output and
/// the MLP's down projection, as in PEFT).
pub const TARGETS: [&str; 3] = ["c_attn", "c_proj", "c_fc"];

#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// q|k|v in one projection: `[n_embd, 3 * n_embd]`.
    pub c_attn: LoraLinear,
    pub c_proj: LoraLinear,
    pub num_heads: usize,
    pub head_dim: usize,
}

impl Gpt2Attention {
    /// # Shapes
    /// - x: `[batch * seq, n_embd]` (rows batch-major) -> `[batch * seq, n_embd]`
    fn forward(
        &self,
        x: Tensor<2>,
        [b, t]: [usize; 2],
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<2> {
        let (nh, hd) = (self.num_heads, self.head_dim);
        let d = nh * hd;
        let qkv = self.c_attn.forward(x);
        let heads = |i: usize| {
            qkv.clone()
                .narrow(1, i * d, d)
                .reshape([b, t, nh, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let (start, (k, v)) = match cache {
            Some((cache, layer)) => (cache.len(), cache.append(layer, k, v)),
            None => (0, (k, v)),
        };
        let scores = q.matmul(k.swap_dims(2, 3));
        let probs = kernels::causal_softmax(scores, t, start, 1.0 / (hd as f64).sqrt());
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b * t, d]);
        self.c_proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    pub c_fc: LoraLinear,
    pub c_proj: LoraLinear,
}

impl Gpt2Mlp {
    /// # Shapes
    /// - x: `[tokens, n_embd]` -> `[tokens, n_embd]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.c_proj.forward(gelu_new(self.c_fc.forward(x)))
    }
}

/// transformers' `gelu_new` (and `gelu_pytorch_tanh`): GELU's tanh approximation,
/// 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
fn gelu_new(x: Tensor<2>) -> Tensor<2> {
    let cube = x.clone() * x.clone() * x.clone();
    let inner =
        (x.clone() + cube.mul_scalar(0.044715)).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.mul_scalar(0.5) * (inner.tanh() + 1.0)
}

#[derive(Module, Debug)]
pub struct Gpt2Block {
    pub ln_1: LayerNorm,
    pub attn: Gpt2Attention,
    pub ln_2: LayerNorm,
    pub mlp: Gpt2Mlp,
}

impl Gpt2Block {
    /// Attention and MLP, each pre-normed and added to the residual stream.
    ///
    /// # Shapes
    /// - x: `[batch * seq, hidden]` -> `[batch * seq, hidden]`
    fn forward(
        &self,
        x: Tensor<2>,
        [b, t]: [usize; 2],
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<2> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), [b, t], cache);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct Gpt2Model {
    pub wte: Embedding,
    /// Learned positions: `[n_positions, n_embd]`.
    pub wpe: Param<Tensor<2>>,
    pub h: Vec<Gpt2Block>,
    pub ln_f: LayerNorm,
}

#[derive(Module, Debug)]
pub struct Gpt2LMHeadModel {
    pub transformer: Gpt2Model,
    /// `[n_embd, vocab]`; `None` when tied to the token embedding (GPT-2's own models).
    pub lm_head: Option<LoraLinear>,
    /// How the tied head's products with an f16 embedding run (the projections carry their own).
    #[module(skip)]
    pub products: FrozenProducts,
}

impl Gpt2LMHeadModel {
    /// Final hidden states, one row per token, the residual stream kept two-dimensional as in the
    /// Llama family (one plain matmul per projection over all tokens).
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch * seq, n_embd]`
    fn hidden_rows(&self, input_ids: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<2> {
        let [b, t] = input_ids.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed_rows(input_ids, start);
        for (i, block) in self.transformer.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = block.forward(x, [b, t], layer_cache);
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        self.transformer.ln_f.forward(x)
    }

    /// Token and position embeddings, positions from `start`.
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch * seq, hidden]`
    fn embed_rows(&self, input_ids: Tensor<2, Int>, start: usize) -> Tensor<2> {
        let [b, t] = input_ids.dims();
        let tok = self.transformer.wte.forward(input_ids); // [b, t, d]
        let [_, _, d] = tok.dims();
        let tok = crate::kernels::f32(tok.reshape([b * t, d]));
        // Callers keep start + t within n_positions (`max_positions`).
        let pos = crate::kernels::f32(self.transformer.wpe.val().narrow(0, start, t)); // [t, d]
        (tok.reshape([b, t, d]) + pos.unsqueeze_dim(0)).reshape([b * t, d])
    }

    /// The loss from final hidden rows (after `ln_f`).
    fn head_loss(&self, h: Tensor<2>, targets: Tensor<2, Int>, block_rows: usize) -> Tensor<1> {
        lm_loss(
            h,
            self.lm_head.as_ref(),
            &self.transformer.wte.weight,
            targets,
            block_rows,
            self.products,
        )
    }

    /// Builds the model from a checkpoint that holds HF tensor names, with or without the
    /// `transformer.` prefix (`GPT2LMHeadModel` / `GPT2Model` files). Every weight is frozen;
    /// the `attn.bias` causal-mask buffers some files carry are not read.
    pub fn load(
        config: &Gpt2Config,
        ckpt: &dyn Checkpoint,
        device: &Device,
        base_f16: bool,
    ) -> Result<Self> {
        let to_tensor2 = |t, device: &Device| matrix(t, device, base_f16);
        let (d, i, v, p) = (
            config.n_embd,
            config.n_inner(),
            config.vocab_size,
            config.n_positions,
        );
        let prefix = if ckpt.shape("transformer.wte.weight").is_some() {
            "transformer."
        } else {
            ""
        };
        let get = |name: &str, shape: &[usize]| -> Result<HostTensor> {
            // HF names are spelled with the prefix; files without it drop it.
            let name = match name.strip_prefix("transformer.") {
                Some(rest) => format!("{prefix}{rest}"),
                None => name.to_string(),
            };
            ckpt.load_shaped(&name, shape)
        };
        let vector = |name: &str, n: usize| -> Result<Tensor<1>> {
            Ok(to_tensor1(get(name, &[n])?, n, device))
        };
        // Conv1D: [d_in, d_out], burn's layout.
        let conv1d = |name: &str, d_in: usize, d_out: usize| -> Result<LoraLinear> {
            let w = to_tensor2(get(&format!("{name}.weight"), &[d_in, d_out])?, device);
            let bias = vector(&format!("{name}.bias"), d_out)?;
            Ok(LoraLinear::frozen_with_bias(w, Some(bias)))
        };
        let layer_norm = |name: &str| -> Result<LayerNorm> {
            let mut ln = LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_epsilon)
                .init(device);
            ln.gamma = frozen_param(vector(&format!("{name}.weight"), d)?);
            ln.beta = Some(frozen_param(vector(&format!("{name}.bias"), d)?));
            Ok(ln)
        };

        let wte = Embedding {
            weight: frozen_param(to_tensor2(get("transformer.wte.weight", &[v, d])?, device)),
        };
        let wpe = frozen_param(to_tensor2(get("transformer.wpe.weight", &[p, d])?, device));
        let mut h = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let b = format!("transformer.h.{l}");
            h.push(Gpt2Block {
                ln_1: layer_norm(&format!("{b}.ln_1"))?,
                attn: Gpt2Attention {
                    c_attn: conv1d(&format!("{b}.attn.c_attn"), d, 3 * d)?,
                    c_proj: conv1d(&format!("{b}.attn.c_proj"), d, d)?,
                    num_heads: config.n_head,
                    head_dim: config.head_dim(),
                },
                ln_2: layer_norm(&format!("{b}.ln_2"))?,
                mlp: Gpt2Mlp {
                    c_fc: conv1d(&format!("{b}.mlp.c_fc"), d, i)?,
                    c_proj: conv1d(&format!("{b}.mlp.c_proj"), i, d)?,
                },
            });
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            // nn.Linear: [vocab, n_embd] in the file.
            let w = get("lm_head.weight", &[v, d])?.transposed();
            Some(LoraLinear::frozen(to_tensor2(w, device)))
        };
        Ok(Self {
            transformer: Gpt2Model {
                wte,
                wpe,
                h,
                ln_f: layer_norm("transformer.ln_f")?,
            },
            lm_head,
            products: FrozenProducts::platform(),
        })
    }
}

impl CausalLanguageModel for Gpt2LMHeadModel {
    fn forward(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let h = self.hidden_rows(input_ids, cache);
        lm_logits(
            h,
            self.lm_head.as_ref(),
            &self.transformer.wte.weight,
            [b, t],
            self.products,
        )
    }

    fn loss_in_blocks(
        &self,
        input_ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        block_rows: usize,
    ) -> Tensor<1> {
        let h = self.hidden_rows(input_ids, None);
        self.head_loss(h, targets, block_rows)
    }

    fn loss_recomputed(
        &self,
        input_ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        scale: f64,
        seed: u64,
    ) -> (Tensor<1>, GradientsParams) {
        let [b, t] = input_ids.dims();
        let frozen = self.clone().no_grad();
        recompute::loss_and_grads(
            self,
            Layers {
                frozen: &frozen.transformer.h,
                training: &self.transformer.h,
                forward: |block: &Gpt2Block, x| block.forward(x, [b, t], None),
            },
            frozen.embed_rows(input_ids, 0),
            |x| {
                self.head_loss(
                    self.transformer.ln_f.forward(x),
                    targets,
                    kernels::LOSS_BLOCK_ROWS_LOW_MEMORY,
                )
            },
            scale,
            seed,
        )
    }

    fn projections(&self) -> Vec<Projection<'_>> {
        projections!(self, iter, &)
    }

    fn projections_mut(&mut self) -> Vec<ProjectionMut<'_>> {
        projections!(self, iter_mut, &mut)
    }

    fn set_products(&mut self, products: FrozenProducts) {
        self.products = products;
        for (_, _, p) in self.projections_mut() {
            p.products = products;
        }
        if let Some(head) = &mut self.lm_head {
            head.products = products;
        }
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &TARGETS
    }

    fn default_targets(&self) -> &'static [&'static str] {
        // PEFT's default for GPT-2: the fused q|k|v projection.
        &["c_attn"]
    }

    fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<2>)> {
        let row = hf_row;
        let matrix = |t: Tensor<2>| (t.dims().to_vec(), t);
        let mut out = Vec::new();
        let tr = &self.transformer;
        let (shape, t) = matrix(tr.wte.weight.val());
        out.push(("transformer.wte.weight".to_string(), shape, t));
        let (shape, t) = matrix(tr.wpe.val());
        out.push(("transformer.wpe.weight".to_string(), shape, t));
        let mut norm = |name: String, ln: &LayerNorm| {
            let (shape, t) = row(ln.gamma.val());
            out.push((format!("{name}.weight"), shape, t));
            if let Some(beta) = &ln.beta {
                let (shape, t) = row(beta.val());
                out.push((format!("{name}.bias"), shape, t));
            }
        };
        for (l, block) in tr.h.iter().enumerate() {
            norm(format!("transformer.h.{l}.ln_1"), &block.ln_1);
            norm(format!("transformer.h.{l}.ln_2"), &block.ln_2);
        }
        norm("transformer.ln_f".to_string(), &tr.ln_f);
        for (path, _, proj) in self.projections() {
            // Conv1D: HF's layout is burn's.
            let (shape, t) = matrix(proj.base.weight.val());
            out.push((format!("{path}.weight"), shape, t));
            if let Some(bias) = &proj.base.bias {
                let (shape, t) = row(bias.val());
                out.push((format!("{path}.bias"), shape, t));
            }
        }
        if let Some(head) = &self.lm_head {
            let (shape, t) = matrix(head.base.weight.val().transpose());
            out.push(("lm_head.weight".to_string(), shape, t));
        }
        out
    }

    fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    fn attention_heads(&self) -> usize {
        self.transformer.h.first().map_or(0, |b| b.attn.num_heads)
    }

    fn device(&self) -> Device {
        self.transformer.wte.weight.val().device()
    }

    fn fan_in_fan_out(&self) -> bool {
        true
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.transformer.wpe.shape().dims::<2>()[0])
    }
}
