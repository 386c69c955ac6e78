//! The Llama family (`LlamaForCausalLM` in transformers): token embedding, pre-norm decoder layers
//! with grouped-query attention, rotary positions and a SwiGLU MLP, final RMSNorm, and an LM head
//! that may be tied to the embedding.

use burn::module::Module;
use burn::nn::{Embedding, RmsNorm};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};

pub mod config;
pub mod gguf;
pub mod rope;

pub use config::LlamaConfig;

use super::recompute::{self, Layers};
use super::weights::{frozen_param, hf_row, lm_logits, lm_loss, matrix, to_tensor1};
use super::{CausalLanguageModel, KvCache, Projection, ProjectionMut};
use crate::error::Result;
use crate::formats::Checkpoint;
use crate::kernels;
use crate::lora::LoraLinear;

/// The HF module tree of the projections, spelled once for both borrows.
macro_rules! projections {
    ($self:ident, $iter:ident, $($borrow:tt)+) => {{
        let mut out = Vec::new();
        for (l, layer) in $self.model.layers.$iter().enumerate() {
            let p = format!("model.layers.{l}");
            let (attn, mlp) = ($($borrow)+ layer.self_attn, $($borrow)+ layer.mlp);
            out.push((format!("{p}.self_attn.q_proj"), "q_proj", $($borrow)+ attn.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), "k_proj", $($borrow)+ attn.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), "v_proj", $($borrow)+ attn.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), "o_proj", $($borrow)+ attn.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), "gate_proj", $($borrow)+ mlp.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), "up_proj", $($borrow)+ mlp.up_proj));
            out.push((format!("{p}.mlp.down_proj"), "down_proj", $($borrow)+ mlp.down_proj));
        }
        out
    }};
}

#[derive(Module, Debug)]
pub struct LlamaAttention {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl LlamaAttention {
    /// Grouped-query attention without repeating keys and values: the query heads that share a
    /// key/value head are stacked as one block of rows, `[batch, kv_heads, groups * seq, head_dim]`,
    /// so one matmul per key head serves all of its query heads.
    ///
    /// # Shapes
    /// - x: `[batch * seq, hidden]` (rows batch-major), cos/sin: `[seq, head_dim]`
    ///   -> `[batch * seq, hidden]`
    fn forward(
        &self,
        x: Tensor<2>,
        [b, t]: [usize; 2],
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<2> {
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let groups = nh / nkv;
        let q = kernels::rope(self.q_proj.forward(x.clone()), cos, sin, b, nh);
        let k = kernels::rope(self.k_proj.forward(x.clone()), cos, sin, b, nkv);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, t, nkv, hd])
            .swap_dims(1, 2);
        let (start, (k, v)) = match cache {
            Some((cache, layer)) => (cache.len(), cache.append(layer, k, v)),
            None => (0, (k, v)),
        };
        let q = q.reshape([b, nkv, groups * t, hd]);
        let scores = q.matmul(k.swap_dims(2, 3));
        let probs = kernels::causal_softmax(scores, t, start, 1.0 / (hd as f64).sqrt());
        let out = probs.matmul(v).reshape([b, nh, t, hd]);
        let out = out.swap_dims(1, 2).reshape([b * t, nh * hd]);
        self.o_proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct LlamaMlp {
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

impl LlamaMlp {
    /// # Shapes
    /// - x: `[tokens, hidden]` -> `[tokens, hidden]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        self.down_proj.forward(kernels::silu_mul(gate, up))
    }
}

#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: LlamaMlp,
}

impl LlamaDecoderLayer {
    /// Attention and MLP, each pre-normed and added to the residual stream.
    ///
    /// # Shapes
    /// - x: `[batch * seq, hidden]`, cos/sin: `[seq, head_dim]` -> `[batch * seq, hidden]`
    fn forward(
        &self,
        x: Tensor<2>,
        [b, t]: [usize; 2],
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<2> {
        let h = rms_norm(&self.input_layernorm, x.clone());
        let x = x + self.self_attn.forward(h, [b, t], cos, sin, cache);
        let h = rms_norm(&self.post_attention_layernorm, x.clone());
        x + self.mlp.forward(h)
    }
}

fn rms_norm(n: &RmsNorm, x: Tensor<2>) -> Tensor<2> {
    kernels::rms_norm(x, n.gamma.val(), n.epsilon)
}

#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<LlamaDecoderLayer>,
    pub norm: RmsNorm,
    pub rope_theta: f64,
}

#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    /// `[hidden, vocab]`; `None` when tied to the token embedding.
    pub lm_head: Option<LoraLinear>,
}

impl LlamaForCausalLM {
    /// Final hidden states.
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let h = self.hidden_rows(input_ids, cache);
        let [_, hidden] = h.dims();
        h.reshape([b, t, hidden])
    }

    /// Final hidden states, one row per token.
    ///
    /// The residual stream stays two-dimensional, `[batch * seq, hidden]`, so that every
    /// projection (and its backward pass) is one plain matmul over all tokens: on the CPU one
    /// large matmul packs the weight once and splits across all cores, where a batched
    /// `[batch, seq, hidden]` product repacked it for each sequence (measured: README, "Speed").
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch * seq, hidden]`
    fn hidden_rows(&self, input_ids: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<2> {
        let [b, t] = input_ids.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let (cos, sin) = self.rope_tables(start, t, &input_ids.device());
        let mut x = self.embed_rows(input_ids);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = layer.forward(x, [b, t], &cos, &sin, layer_cache);
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        rms_norm(&self.model.norm, x)
    }

    /// The rotary tables for `len` positions from `start`.
    fn rope_tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let head_dim = self.model.layers[0].self_attn.head_dim;
        rope::tables(self.model.rope_theta, head_dim, start, len, device)
    }

    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch * seq, hidden]`
    fn embed_rows(&self, input_ids: Tensor<2, Int>) -> Tensor<2> {
        let [b, t] = input_ids.dims();
        crate::kernels::f32(
            self.model
                .embed_tokens
                .forward(input_ids.reshape([1, b * t]))
                .squeeze_dim(0),
        )
    }

    /// The loss from final hidden rows (after the final norm).
    fn head_loss(&self, h: Tensor<2>, targets: Tensor<2, Int>, block_rows: usize) -> Tensor<1> {
        lm_loss(
            h,
            self.lm_head.as_ref(),
            &self.model.embed_tokens.weight,
            targets,
            block_rows,
        )
    }

    /// Builds the model from a checkpoint that holds HF tensor names. Every weight is frozen.
    pub fn load(
        config: &LlamaConfig,
        ckpt: &dyn Checkpoint,
        device: &Device,
        base_f16: bool,
    ) -> Result<Self> {
        let to_tensor2 = |t, device: &Device| matrix(t, device, base_f16);
        let (h, i, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let (nh, nkv, hd) = (
            config.num_attention_heads,
            config.num_key_value_heads(),
            config.head_dim(),
        );
        let get = |name: &str, shape: &[usize]| ckpt.load_shaped(name, shape);
        // HF stores linear weights [out, in]; burn's Linear wants [in, out].
        let linear = |name: &str, d_out: usize, d_in: usize| -> Result<LoraLinear> {
            let w = get(name, &[d_out, d_in])?.transposed();
            Ok(LoraLinear::frozen(to_tensor2(w, device)))
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            let w = get(name, &[h])?;
            Ok(RmsNorm {
                gamma: frozen_param(to_tensor1(w, h, device)),
                epsilon: config.rms_norm_eps,
            })
        };

        let embed = get("model.embed_tokens.weight", &[v, h])?;
        let embed_tokens = Embedding {
            weight: frozen_param(to_tensor2(embed, device)),
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(LlamaDecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
                self_attn: LlamaAttention {
                    q_proj: linear(&format!("{p}.self_attn.q_proj.weight"), nh * hd, h)?,
                    k_proj: linear(&format!("{p}.self_attn.k_proj.weight"), nkv * hd, h)?,
                    v_proj: linear(&format!("{p}.self_attn.v_proj.weight"), nkv * hd, h)?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj.weight"), h, nh * hd)?,
                    num_heads: nh,
                    num_kv_heads: nkv,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: LlamaMlp {
                    gate_proj: linear(&format!("{p}.mlp.gate_proj.weight"), i, h)?,
                    up_proj: linear(&format!("{p}.mlp.up_proj.weight"), i, h)?,
                    down_proj: linear(&format!("{p}.mlp.down_proj.weight"), h, i)?,
                },
            });
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(linear("lm_head.weight", v, h)?)
        };
        Ok(Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm: norm("model.norm.weight")?,
                rope_theta: config.rope_theta(),
            },
            lm_head,
        })
    }
}

/// The projections LoRA may target, in HF module order.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl CausalLanguageModel for LlamaForCausalLM {
    /// Next-token logits at every position.
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch, seq, vocab]`
    fn forward(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let h = self.hidden_rows(input_ids, cache);
        lm_logits(
            h,
            self.lm_head.as_ref(),
            &self.model.embed_tokens.weight,
            [b, t],
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
        let (cos, sin) = self.rope_tables(0, t, &input_ids.device());
        let frozen = self.clone().no_grad();
        recompute::loss_and_grads(
            self,
            Layers {
                frozen: &frozen.model.layers,
                training: &self.model.layers,
                forward: |l: &LlamaDecoderLayer, x| l.forward(x, [b, t], &cos, &sin, None),
            },
            frozen.embed_rows(input_ids),
            |x| {
                self.head_loss(
                    rms_norm(&self.model.norm, x),
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

    fn lora_targets(&self) -> &'static [&'static str] {
        &TARGETS
    }

    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    /// Every weight under its HF name and in HF's layout (linear weights `[out, in]`), as
    /// [`Self::load`] reads them, with the shape to write: for writing the model back out (a
    /// merged export). Norm weights come as `[1, hidden]` tensors of shape `[hidden]`.
    fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<2>)> {
        let row = hf_row;
        let linear = |t: Tensor<2>| {
            let t = t.transpose(); // burn's [in, out] -> HF's [out, in]
            (t.dims().to_vec(), t)
        };
        let mut out = Vec::new();
        let embed = self.model.embed_tokens.weight.val();
        out.push((
            "model.embed_tokens.weight".to_string(),
            embed.dims().to_vec(),
            embed,
        ));
        for (l, layer) in self.model.layers.iter().enumerate() {
            for (name, norm) in [
                ("input_layernorm", &layer.input_layernorm),
                ("post_attention_layernorm", &layer.post_attention_layernorm),
            ] {
                let (shape, t) = row(norm.gamma.val());
                out.push((format!("model.layers.{l}.{name}.weight"), shape, t));
            }
        }
        for (path, _, proj) in self.projections() {
            let (shape, t) = linear(proj.base.weight.val());
            out.push((format!("{path}.weight"), shape, t));
        }
        let (shape, t) = row(self.model.norm.gamma.val());
        out.push(("model.norm.weight".to_string(), shape, t));
        if let Some(head) = &self.lm_head {
            let (shape, t) = linear(head.base.weight.val());
            out.push(("lm_head.weight".to_string(), shape, t));
        }
        out
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn device(&self) -> Device {
        self.model.embed_tokens.weight.val().device()
    }
}
