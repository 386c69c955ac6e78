//! The GPT-2 configuration: HF `config.json` field names (`GPT2Config`), or the same values read
//! from GGUF metadata (`general.architecture = gpt2`).

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::Gpt2LMHeadModel;
use crate::error::{Error, Result};
use crate::formats::Checkpoint;
use crate::formats::gguf::{GgufFile, GgufTensorMap};
use crate::model::CausalLM;
use crate::model::config::{
    FamilyConfig, GgufParams, SUPPORTED, TokenIds, check_sizes, config_json,
};

/// `GPT2Config` as in transformers' `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    /// Learned positions: the longest input the model reads.
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// The MLP's width; `4 * n_embd` when absent.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

fn default_activation() -> String {
    "gelu_new".to_string()
}
fn default_layer_norm_epsilon() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

impl Gpt2Config {
    /// Parses `config.json` and checks that webtune can run the model it describes.
    pub fn from_json(file: &str, json: &str) -> Result<Self> {
        let config: Gpt2Config = serde_json::from_str(json)
            .map_err(|e| Error::config(file, format!("not a valid GPT-2 config.json: {e}")))?;
        config.validate(file)?;
        Ok(config)
    }

    /// Reads the `gpt2.*` metadata of a GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let file = gguf.file_name.as_str();
        let p = GgufParams { gguf, arch: "gpt2" };
        // llama.cpp's converter writes the tied head out as `output.weight`, a copy of the
        // embedding: tied unless the file holds a different head.
        let tied = match gguf.raw_bytes("output.weight") {
            None => true,
            Some(head) => gguf.raw_bytes("token_embd.weight") == Some(head),
        };
        let config = Gpt2Config {
            model_type: Some("gpt2".to_string()),
            vocab_size: p.embedding_rows()?,
            n_positions: p.int("context_length")?,
            n_embd: p.int("embedding_length")?,
            n_layer: p.int("block_count")?,
            n_head: p.int("attention.head_count")?,
            // Absent: 4 x n_embd (n_inner()).
            n_inner: p.int_opt("feed_forward_length")?,
            activation_function: default_activation(),
            layer_norm_epsilon: p.float("attention.layer_norm_epsilon").unwrap_or(1e-5),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            add_cross_attention: false,
            tie_word_embeddings: tied,
            bos_token_id: p.token_id("bos_token_id")?,
            eos_token_id: p.token_id("eos_token_id")?.map(TokenIds::One),
        };
        config.validate(file)?;
        Ok(config)
    }

    pub fn n_inner(&self) -> usize {
        // Saturating: a hostile n_embd must reach the limit check, not overflow.
        self.n_inner.unwrap_or(self.n_embd.saturating_mul(4))
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// [`FamilyConfig::num_parameters`] in 64 bits, saturating: safe on any config.
    fn num_parameters_u64(&self) -> u64 {
        let n = |x: usize| x as u64;
        let (d, i, v, p) = (
            n(self.n_embd),
            n(self.n_inner()),
            n(self.vocab_size),
            n(self.n_positions),
        );
        // ln_1, ln_2 (weight + bias); c_attn d -> 3d; attn c_proj d -> d; c_fc d -> i; c_proj i -> d
        let layer = d
            .saturating_mul(4)
            .saturating_add(d.saturating_mul(d).saturating_mul(3))
            .saturating_add(d.saturating_mul(3))
            .saturating_add(d.saturating_mul(d))
            .saturating_add(d)
            .saturating_add(d.saturating_mul(i).saturating_mul(2))
            .saturating_add(i)
            .saturating_add(d);
        let head = if self.tie_word_embeddings {
            0
        } else {
            v.saturating_mul(d)
        };
        v.saturating_mul(d)
            .saturating_add(p.saturating_mul(d))
            .saturating_add(n(self.n_layer).saturating_mul(layer))
            .saturating_add(d.saturating_mul(2))
            .saturating_add(head)
    }

    /// Rejects what the model code does not implement, so it fails here with a message instead
    /// of giving wrong numbers later.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |problem: String| Err(Error::config(file, problem));
        if let Some(t) = &self.model_type
            && t != "gpt2"
        {
            return bad(format!(
                "model_type `{t}` is not supported (supported: {SUPPORTED})"
            ));
        }
        use crate::limits::{MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
        let mut special = self.eos_token_ids();
        special.extend(self.bos_token_id);
        check_sizes(
            file,
            &[
                ("vocab_size", self.vocab_size, MAX_VOCAB),
                ("n_positions", self.n_positions, MAX_WIDTH),
                ("n_embd", self.n_embd, MAX_WIDTH),
                ("n_layer", self.n_layer, MAX_LAYERS),
                ("n_head", self.n_head, MAX_HEADS),
                ("n_inner", self.n_inner(), MAX_WIDTH),
            ],
            self.num_parameters_u64(),
            &special,
            self.vocab_size,
        )?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd ({}) is not a multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        // gelu_pytorch_tanh is the same tanh approximation as gelu_new.
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return bad(format!(
                "activation_function `{}` is not supported (supported: gelu_new)",
                self.activation_function
            ));
        }
        if !self.scale_attn_weights || self.scale_attn_by_inverse_layer_idx {
            return bad("only attention scaled by 1/sqrt(head_dim) is supported \
                        (scale_attn_weights true, scale_attn_by_inverse_layer_idx false)"
                .to_string());
        }
        if self.add_cross_attention {
            return bad("cross-attention (add_cross_attention) is not supported".to_string());
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return bad("layer_norm_epsilon must be positive".to_string());
        }
        Ok(())
    }
}

impl FamilyConfig for Gpt2Config {
    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn architecture(&self) -> &'static str {
        "GPT2LMHeadModel"
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.n_embd
    }

    fn num_layers(&self) -> usize {
        self.n_layer
    }

    fn intermediate_size(&self) -> usize {
        self.n_inner()
    }

    fn attention_heads(&self) -> usize {
        self.n_head
    }

    fn context_length(&self) -> usize {
        self.n_positions
    }

    fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }

    fn num_parameters(&self) -> usize {
        usize::try_from(self.num_parameters_u64()).unwrap_or(usize::MAX)
    }

    fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    fn load_with(
        &self,
        ckpt: &dyn Checkpoint,
        device: &Device,
        base_f16: bool,
    ) -> Result<CausalLM> {
        Gpt2LMHeadModel::load(self, ckpt, device, base_f16).map(CausalLM::Gpt2)
    }

    fn gguf_map(&self) -> Box<dyn GgufTensorMap> {
        Box::new(super::gguf::Gpt2GgufMap)
    }

    fn to_json(&self) -> Result<serde_json::Value> {
        config_json(self)
    }
}
