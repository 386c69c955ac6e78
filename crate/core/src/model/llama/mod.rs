//! The Llama family (`LlamaForCausalLM` in transformers): token embedding, pre-norm decoder layers
//! with grouped-query attention, rotary positions and a SwiGLU MLP, final RMSNorm, and an LM head
//! that may be tied to the embedding. Its decoder serves the families built like it (Qwen2:
//! `crate::model::qwen2`), which differ in their biases ([`Biases`]) and their files.
//!
//! Every tensor's name is written once, in [`names`]: loading, the projections LoRA targets,
//! writing the model back out and the GGUF map all read it.

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
use crate::kernels::{self, FrozenProducts};
use crate::lora::LoraLinear;

/// The family's tensor names: each module's HF path and llama.cpp's GGUF name, written once.
pub mod names {
    /// A module: its HF path (under `model.layers.{i}.` for a layer's) and its GGUF name (under
    /// `blk.{i}.`).
    pub type Name = (&'static str, &'static str);

    pub const EMBED: Name = ("model.embed_tokens", "token_embd");
    pub const NORM: Name = ("model.norm", "output_norm");
    pub const HEAD: Name = ("lm_head", "output");
    /// Modules outside the layers.
    pub const TOP: [Name; 3] = [EMBED, NORM, HEAD];

    pub const INPUT_NORM: Name = ("input_layernorm", "attn_norm");
    pub const POST_NORM: Name = ("post_attention_layernorm", "ffn_norm");
    pub const Q: Name = ("self_attn.q_proj", "attn_q");
    pub const K: Name = ("self_attn.k_proj", "attn_k");
    pub const V: Name = ("self_attn.v_proj", "attn_v");
    pub const O: Name = ("self_attn.o_proj", "attn_output");
    pub const GATE: Name = ("mlp.gate_proj", "ffn_gate");
    pub const UP: Name = ("mlp.up_proj", "ffn_up");
    pub const DOWN: Name = ("mlp.down_proj", "ffn_down");
    /// The projections, in HF module order: what LoRA may target.
    pub const PROJECTIONS: [Name; 7] = [Q, K, V, O, GATE, UP, DOWN];
    /// A layer's modules.
    pub const LAYER: [Name; 9] = [INPUT_NORM, Q, K, V, O, POST_NORM, GATE, UP, DOWN];

    /// The HF name of `module`'s `kind` (`weight`, `bias`) in layer `l`.
    pub fn layer(l: usize, module: Name, kind: &str) -> String {
        format!("model.layers.{l}.{}.{kind}", module.0)
    }

    /// The short name LoRA targets a projection by: its path's last part (`q_proj`).
    pub fn short(module: Name) -> &'static str {
        module.0.rsplit('.').next().unwrap_or(module.0)
    }
}

/// The projections LoRA may target, by their short names, in HF module order: the last part of
/// each of [`names::PROJECTIONS`]' paths (a test checks the two agree).
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The projections of a model of the family, for both borrows: the names from [`names`], the
/// fields the module tree has.
macro_rules! projections {
    ($self:ident, $iter:ident, $($borrow:tt)+) => {{
        use names::*;
        let mut out = Vec::new();
        for (l, layer) in $self.model.layers.$iter().enumerate() {
            let p = |m: Name| format!("model.layers.{l}.{}", m.0);
            let (attn, mlp) = ($($borrow)+ layer.self_attn, $($borrow)+ layer.mlp);
            out.push((p(Q), short(Q), $($borrow)+ attn.q_proj));
            out.push((p(K), short(K), $($borrow)+ attn.k_proj));
            out.push((p(V), short(V), $($borrow)+ attn.v_proj));
            out.push((p(O), short(O), $($borrow)+ attn.o_proj));
            out.push((p(GATE), short(GATE), $($borrow)+ mlp.gate_proj));
            out.push((p(UP), short(UP), $($borrow)+ mlp.up_proj));
            out.push((p(DOWN), short(DOWN), $($borrow)+ mlp.down_proj));
        }
        out
    }};
}

/// Which projections carry a (frozen) bias: none in Llama (transformers' `attention_bias` puts
/// one on the four attention projections, `mlp_bias` on the MLP's); Qwen2 on q, k and v.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Biases {
    pub qkv: bool,
    pub o: bool,
    pub mlp: bool,
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
    /// The rotary frequencies (from `rope_theta`, with the config's scaling).
    #[module(skip)]
    pub rope: rope::Rope,
    /// The positions the model was made for (`max_position_embeddings`): the longest input
    /// webtune gives it.
    #[module(skip)]
    pub context: usize,
}

#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    /// `[hidden, vocab]`; `None` when tied to the token embedding.
    pub lm_head: Option<LoraLinear>,
    /// How the tied head's products with an f16 embedding run (the projections carry their own).
    #[module(skip)]
    pub products: FrozenProducts,
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
        self.model.rope.tables(start, len, device)
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
            self.products,
        )
    }

    /// Builds the model from a checkpoint that holds HF tensor names, its projections' biases
    /// as `biases` says. Every weight is frozen.
    pub fn load(
        config: &LlamaConfig,
        biases: Biases,
        ckpt: &dyn Checkpoint,
        device: &Device,
        base_f16: bool,
    ) -> Result<Self> {
        use names::*;
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
        let linear = |path: &str, d_out: usize, d_in: usize, bias: bool| -> Result<LoraLinear> {
            let w = get(&format!("{path}.weight"), &[d_out, d_in])?.transposed();
            let b = match bias {
                true => Some(to_tensor1(
                    get(&format!("{path}.bias"), &[d_out])?,
                    d_out,
                    device,
                )),
                false => None,
            };
            Ok(LoraLinear::frozen_with_bias(to_tensor2(w, device), b))
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            let w = get(name, &[h])?;
            Ok(RmsNorm {
                gamma: frozen_param(to_tensor1(w, h, device)),
                epsilon: config.rms_norm_eps,
            })
        };

        let embed = get(&format!("{}.weight", EMBED.0), &[v, h])?;
        let embed_tokens = Embedding {
            weight: frozen_param(to_tensor2(embed, device)),
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = |m: Name| format!("model.layers.{l}.{}", m.0);
            layers.push(LlamaDecoderLayer {
                input_layernorm: norm(&layer(l, INPUT_NORM, "weight"))?,
                self_attn: LlamaAttention {
                    q_proj: linear(&p(Q), nh * hd, h, biases.qkv)?,
                    k_proj: linear(&p(K), nkv * hd, h, biases.qkv)?,
                    v_proj: linear(&p(V), nkv * hd, h, biases.qkv)?,
                    o_proj: linear(&p(O), h, nh * hd, biases.o)?,
                    num_heads: nh,
                    num_kv_heads: nkv,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(&layer(l, POST_NORM, "weight"))?,
                mlp: LlamaMlp {
                    gate_proj: linear(&p(GATE), i, h, biases.mlp)?,
                    up_proj: linear(&p(UP), i, h, biases.mlp)?,
                    down_proj: linear(&p(DOWN), h, i, biases.mlp)?,
                },
            });
        }
        // llama.cpp's converter writes Llama 3's scaling as per-frequency factors, a tensor.
        let rope = if config.gguf_rope_freqs {
            let factors = get(ROPE_FREQS, &[hd / 2])?;
            if let Some(bad) = factors.data.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                return Err(crate::Error::format(
                    ckpt.file_name(),
                    format!("`{ROPE_FREQS}` holds {bad}, not a positive factor"),
                ));
            }
            config.rope().with_freq_factors(&factors.data)
        } else {
            config.rope()
        };
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(linear(HEAD.0, v, h, false)?)
        };
        Ok(Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm: norm(&format!("{}.weight", NORM.0))?,
                rope,
                context: config.max_position_embeddings,
            },
            lm_head,
            products: FrozenProducts::platform(),
        })
    }
}

/// llama.cpp's rotary frequency factors in a GGUF file (no HF tensor: [`LlamaConfig::rope`]
/// computes the same from `config.json`'s scaling).
pub const ROPE_FREQS: &str = "rope_freqs.weight";

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
        &["q_proj", "v_proj"]
    }

    /// Every weight under its HF name and in HF's layout (linear weights `[out, in]`), as
    /// [`Self::load`] reads them, with the shape to write: for writing the model back out (a
    /// merged export). Norm weights come as `[1, hidden]` tensors of shape `[hidden]`.
    fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<2>)> {
        use names::*;
        let row = hf_row;
        let linear = |t: Tensor<2>| {
            let t = t.transpose(); // burn's [in, out] -> HF's [out, in]
            (t.dims().to_vec(), t)
        };
        let mut out = Vec::new();
        let embed = self.model.embed_tokens.weight.val();
        out.push((format!("{}.weight", EMBED.0), embed.dims().to_vec(), embed));
        for (l, layer) in self.model.layers.iter().enumerate() {
            for (name, norm) in [
                (INPUT_NORM, &layer.input_layernorm),
                (POST_NORM, &layer.post_attention_layernorm),
            ] {
                let (shape, t) = row(norm.gamma.val());
                out.push((names::layer(l, name, "weight"), shape, t));
            }
        }
        for (path, _, proj) in self.projections() {
            let (shape, t) = linear(proj.base.weight.val());
            out.push((format!("{path}.weight"), shape, t));
            if let Some(bias) = &proj.base.bias {
                let (shape, t) = row(bias.val());
                out.push((format!("{path}.bias"), shape, t));
            }
        }
        let (shape, t) = row(self.model.norm.gamma.val());
        out.push((format!("{}.weight", NORM.0), shape, t));
        if let Some(head) = &self.lm_head {
            let (shape, t) = linear(head.base.weight.val());
            out.push((format!("{}.weight", HEAD.0), shape, t));
        }
        out
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn attention_heads(&self) -> usize {
        self.model
            .layers
            .first()
            .map_or(0, |l| l.self_attn.num_heads)
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.model.context)
    }

    fn device(&self) -> Device {
        self.model.embed_tokens.weight.val().device()
    }
}
