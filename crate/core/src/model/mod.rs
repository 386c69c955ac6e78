//! Model families, behind one boundary.
//!
//! Each family lives in its own folder that reads like its Hugging Face module tree: the model and
//! its loader (`mod.rs`, where HF tensor names are spelled: read by `load`, written back by
//! `hf_tensors`), its `config.json` ([`config`]), its GGUF tensor map (`gguf.rs`). The rest of
//! webtune sees a model only through [`CausalLM`] and its config only through [`ModelConfig`]:
//! adding a family is a folder plus one variant in each of the two enums.

pub mod config;
pub mod gpt2;
pub mod kv_cache;
pub mod llama;
pub mod qwen2;
mod recompute;
mod weights;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};

pub use config::{FamilyConfig, ModelConfig, TokenIds};
pub use gpt2::{Gpt2Config, Gpt2LMHeadModel};
pub use kv_cache::KvCache;
pub use llama::{LlamaConfig, LlamaForCausalLM};
pub use qwen2::{Qwen2Config, Qwen2ForCausalLM};

use crate::kernels::FrozenProducts;
use crate::lora::LoraLinear;

/// A linear projection of a model: its HF module path (`model.layers.0.self_attn.q_proj`), its
/// short name for LoRA targeting (`q_proj`), and the layer.
pub type Projection<'a> = (String, &'static str, &'a LoraLinear);
/// [`Projection`], mutable.
pub type ProjectionMut<'a> = (String, &'static str, &'a mut LoraLinear);

/// What every model family gives the rest of webtune.
pub trait CausalLanguageModel {
    /// Next-token logits at every position; with a cache, the positions follow the cached ones.
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch, seq, vocab]`
    fn forward(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3>;
    /// Mean next-token cross-entropy of [`Self::forward`]'s logits against `targets` (what
    /// training and evaluation compute), without a cache.
    ///
    /// # Shapes
    /// - input_ids, targets: `[batch, seq]` -> `[1]`
    fn loss(&self, input_ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        self.loss_in_blocks(input_ids, targets, crate::kernels::LOSS_BLOCK_ROWS)
    }
    /// [`Self::loss`], the CPU backend's LM head computing `block_rows` rows of logits at a
    /// time ([`crate::kernels::linear_cross_entropy`]): fewer rows, less memory, more time.
    ///
    /// # Shapes
    /// - input_ids, targets: `[batch, seq]` -> `[1]`
    fn loss_in_blocks(
        &self,
        input_ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        block_rows: usize,
    ) -> Tensor<1>;
    /// [`Self::loss`] times `scale` (detached), and the gradients of the trainable parameters,
    /// by activation recomputation: the forward pass keeps only each decoder layer's input, and
    /// the backward pass runs each layer again (peak memory: one layer's activations instead of
    /// all, for one more forward pass). Dropout draws from seeds derived from `seed`.
    ///
    /// # Shapes
    /// - input_ids, targets: `[batch, seq]` -> `[1]`
    fn loss_recomputed(
        &self,
        input_ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        scale: f64,
        seed: u64,
    ) -> (Tensor<1>, GradientsParams);
    /// Every projection LoRA may adapt, in HF module order (the LM head is not one).
    fn projections(&self) -> Vec<Projection<'_>>;
    /// [`Self::projections`], mutable.
    fn projections_mut(&mut self) -> Vec<ProjectionMut<'_>>;
    /// How every product with a frozen f16 matrix runs (the projections and the LM head).
    fn set_products(&mut self, products: FrozenProducts);
    /// The short names LoRA may target (`all-linear` means all of them).
    fn lora_targets(&self) -> &'static [&'static str];
    /// The targets a run gets when none are chosen (the LoRA paper's: the attention's).
    fn default_targets(&self) -> &'static [&'static str];
    /// Every weight under its HF name and in HF's layout, with the shape to write (1-D tensors
    /// come as `[1, n]` with shape `[n]`): for writing the model back out (a merged export).
    fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<2>)>;
    fn num_layers(&self) -> usize;
    /// Query heads of an attention layer (each holds a `[tokens, tokens]` score matrix).
    fn attention_heads(&self) -> usize;
    /// Where the weights live.
    fn device(&self) -> Device;
    /// Whether the family's projections store their weight `[d_in, d_out]` in HF (GPT-2's
    /// `Conv1D`): PEFT's `fan_in_fan_out`.
    fn fan_in_fan_out(&self) -> bool {
        false
    }
    /// The longest input the model reads (learned positions), if it has a limit.
    fn max_positions(&self) -> Option<usize> {
        None
    }
}

/// A causal language model of any supported family.
#[derive(Module, Debug)]
pub enum CausalLM {
    Llama(LlamaForCausalLM),
    Gpt2(Gpt2LMHeadModel),
}

impl CausalLM {
    fn family(&self) -> &dyn CausalLanguageModel {
        match self {
            Self::Llama(m) => m,
            Self::Gpt2(m) => m,
        }
    }

    fn family_mut(&mut self) -> &mut dyn CausalLanguageModel {
        match self {
            Self::Llama(m) => m,
            Self::Gpt2(m) => m,
        }
    }

    /// # Shapes
    /// - input_ids: `[batch, seq]` -> `[batch, seq, vocab]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.family().forward(input_ids, cache)
    }

    /// # Shapes
    /// - input_ids, targets: `[batch, seq]` -> `[1]`
    pub fn loss(&self, input_ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        self.family().loss(input_ids, targets)
    }

    /// See [`CausalLanguageModel::loss_in_blocks`].
    ///
    /// # Shapes
    /// - input_ids, targets: `[batch, seq]` -> `[1]`
    pub fn loss_in_blocks(
        &self,
        input_ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        block_rows: usize,
    ) -> Tensor<1> {
        self.family().loss_in_blocks(input_ids, targets, block_rows)
    }

    /// See [`CausalLanguageModel::loss_recomputed`].
    ///
    /// # Shapes
    /// - input_ids, targets: `[batch, seq]` -> `[1]`
    pub fn loss_recomputed(
        &self,
        input_ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        scale: f64,
        seed: u64,
    ) -> (Tensor<1>, GradientsParams) {
        self.family()
            .loss_recomputed(input_ids, targets, scale, seed)
    }

    pub fn projections(&self) -> Vec<Projection<'_>> {
        self.family().projections()
    }

    pub fn projections_mut(&mut self) -> Vec<ProjectionMut<'_>> {
        self.family_mut().projections_mut()
    }

    pub fn lora_targets(&self) -> &'static [&'static str] {
        self.family().lora_targets()
    }

    pub fn default_targets(&self) -> &'static [&'static str] {
        self.family().default_targets()
    }

    /// See [`CausalLanguageModel::hf_tensors`]; always f32 (a base kept in f16 is widened).
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<2>)> {
        self.family()
            .hf_tensors()
            .into_iter()
            .map(|(name, shape, t)| (name, shape, crate::kernels::f32(t)))
            .collect()
    }

    pub fn num_layers(&self) -> usize {
        self.family().num_layers()
    }

    pub fn attention_heads(&self) -> usize {
        self.family().attention_heads()
    }

    pub fn device(&self) -> Device {
        self.family().device()
    }

    pub fn fan_in_fan_out(&self) -> bool {
        self.family().fan_in_fan_out()
    }

    pub fn max_positions(&self) -> Option<usize> {
        self.family().max_positions()
    }

    /// Refuses `tokens` positions beyond what the model reads, or whose attention would not fit
    /// in memory for one window ([`Self::check_batch`]).
    pub fn check_length(&self, tokens: usize) -> crate::Result<()> {
        self.check_batch(1, tokens, false)
    }

    /// Refuses `batch` windows of `tokens` positions that the model does not read (beyond its
    /// positions), or whose attention scores would take more than
    /// [`crate::limits::MAX_ATTENTION_BYTES`]: `batch x heads x tokens^2` floats a layer, and
    /// when `training` (every activation kept for the backward pass) for every layer.
    pub fn check_batch(&self, batch: usize, tokens: usize, training: bool) -> crate::Result<()> {
        if let Some(max) = self.max_positions()
            && tokens > max
        {
            return Err(crate::Error::Invalid(format!(
                "{tokens} tokens are more than this model reads at once ({max} positions)"
            )));
        }
        let layers = if training { self.num_layers() } else { 1 };
        let bytes = [batch, self.attention_heads(), tokens, tokens, 4, layers]
            .iter()
            .fold(1u64, |n, &x| n.saturating_mul(x as u64));
        let max = crate::limits::MAX_ATTENTION_BYTES;
        if bytes > max {
            return Err(crate::Error::Invalid(format!(
                "{batch} x {tokens} tokens: the attention scores would take {} MB{}, more than \
                 the {} MB allowed here; use fewer tokens (the sequence length), fewer windows at \
                 once (the batch size; gradient accumulation keeps a step's size){}",
                bytes >> 20,
                if training {
                    " for the backward pass"
                } else {
                    ""
                },
                max >> 20,
                if training {
                    ", or \"Save memory\" (exec.recompute)"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }

    /// The model with its frozen matrices kept in f16 (projections, embeddings, the LM head:
    /// half the bytes of the base, 257 of SmolLM2's 513 MiB), and the bytes saved. Products
    /// with a frozen weight run as [`crate::kernels::frozen_matmul`] says (on the CPU backend in
    /// f32 from the rounded weights; on a GPU in f16); LoRA's branches, the norms and biases
    /// stay f32. Only where the device holds f16 ([`crate::device::holds_f16`]): elsewhere the
    /// model comes back as it was, with 0.
    pub fn with_base_in_f16(self) -> (Self, usize) {
        if !crate::device::holds_f16(&self.device()) {
            return (self, 0);
        }
        let mut mapper = weights::BaseToF16::default();
        let model = self.map(&mut mapper);
        (model, mapper.saved)
    }

    /// The model with its products with frozen f16 matrices computed as `products` says
    /// (on the CPU backend; elsewhere the choice changes nothing).
    pub fn with_products(mut self, products: FrozenProducts) -> Self {
        self.family_mut().set_products(products);
        self
    }

    /// Whether the frozen base is kept in f16 ([`Self::with_base_in_f16`]).
    pub fn base_in_f16(&self) -> bool {
        self.projections()
            .iter()
            .any(|(_, _, p)| p.base.weight.val().dtype() == burn::tensor::DType::F16)
    }

    /// Parameters in the LoRA branches (the trainable ones).
    pub fn num_lora_parameters(&self) -> usize {
        self.projections()
            .iter()
            .filter_map(|(_, _, p)| p.lora.as_ref())
            .map(|l| l.a.num_params() + l.b.num_params())
            .sum()
    }
}
