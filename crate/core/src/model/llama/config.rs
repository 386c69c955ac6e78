//! The Llama-family configuration: HF `config.json` field names, or the same values read from
//! GGUF metadata.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::rope::{Llama3Scaling, Rope};
use crate::error::{Error, Result};
use crate::formats::Checkpoint;
use crate::formats::gguf::{GgufFile, GgufTensorMap};
use crate::model::config::{
    FamilyConfig, GgufParams, SUPPORTED, TokenIds, check_sizes, config_json,
};
use crate::model::{CausalLM, LlamaForCausalLM};

/// transformers 5 moved `rope_theta` and the scaling (4's `rope_scaling`) into
/// `rope_parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// `LlamaConfig` as in transformers' `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; equal to `num_attention_heads` when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Read from a GGUF file: it holds llama.cpp's rotary frequency factors
    /// (`rope_freqs.weight`, Llama 3's scaling as its converter writes it).
    #[serde(skip)]
    pub gguf_rope_freqs: bool,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".to_string()
}

const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl LlamaConfig {
    /// Parses `config.json` and checks that webtune can run the model it describes.
    pub fn from_json(file: &str, json: &str) -> Result<Self> {
        let config: LlamaConfig = serde_json::from_str(json)
            .map_err(|e| Error::config(file, format!("not a valid Llama config.json: {e}")))?;
        config.validate(file)?;
        Ok(config)
    }

    /// Reads the `llama.*` metadata of a GGUF file (one whose `general.architecture` is
    /// `llama`: [`crate::model::ModelConfig::from_gguf`] picks the family).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let config = Self::from_gguf_keys(gguf, "llama")?;
        config.validate(&gguf.file_name)?;
        Ok(config)
    }

    /// The decoder's hyperparameters under `{arch}.*` keys (llama.cpp writes the families built
    /// like Llama's with the same keys under their own name), not validated.
    pub fn from_gguf_keys(gguf: &GgufFile, arch: &str) -> Result<Self> {
        let p = GgufParams { gguf, arch };
        let vocab_size = match p.int_opt("vocab_size")? {
            Some(v) => v,
            None => p.embedding_rows()?,
        };
        let num_attention_heads = p.int("attention.head_count")?;
        let head_dim = match p.int_opt("attention.key_length")? {
            Some(d) => Some(d),
            None => p.int_opt("rope.dimension_count")?,
        };
        let config = LlamaConfig {
            model_type: Some(arch.to_string()),
            vocab_size,
            hidden_size: p.int("embedding_length")?,
            intermediate_size: p.int("feed_forward_length")?,
            num_hidden_layers: p.int("block_count")?,
            num_attention_heads,
            num_key_value_heads: Some(
                p.int_opt("attention.head_count_kv")?
                    .unwrap_or(num_attention_heads),
            ),
            head_dim,
            rms_norm_eps: p.float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: Some(p.float("rope.freq_base").unwrap_or(DEFAULT_ROPE_THETA)),
            rope_parameters: None,
            rope_scaling: gguf
                .get(&format!("{arch}.rope.scaling.type"))
                .and_then(|v| v.as_str())
                .filter(|t| *t != "none")
                .map(|t| serde_json::json!({ "rope_type": t })),
            max_position_embeddings: p.int_opt("context_length")?.unwrap_or(2048),
            tie_word_embeddings: gguf.tensor_info("output.weight").is_none(),
            bos_token_id: p.token_id("bos_token_id")?,
            eos_token_id: p.token_id("eos_token_id")?.map(TokenIds::One),
            hidden_act: "silu".to_string(),
            attention_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some(),
            mlp_bias: gguf.tensor_info("blk.0.ffn_up.bias").is_some(),
            gguf_rope_freqs: gguf.tensor_info("rope_freqs.weight").is_some(),
        };
        Ok(config)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// The projections with a bias: the attention's four with `attention_bias`, the MLP's three
    /// with `mlp_bias` (transformers' Llama).
    pub fn biases(&self) -> super::Biases {
        super::Biases {
            qkv: self.attention_bias,
            o: self.attention_bias,
            mlp: self.mlp_bias,
        }
    }

    /// The rotary scaling: none, or Llama 3's; an error names any other.
    pub fn rope_scaling(&self) -> std::result::Result<Option<Llama3Scaling>, String> {
        let scaling: Option<RopeParameters> = match &self.rope_scaling {
            Some(v) if !v.is_null() => Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| format!("rope_scaling is not understood: {e}"))?,
            ),
            _ => self.rope_parameters.clone(),
        };
        let Some(p) = scaling else { return Ok(None) };
        match p.rope_type.as_deref() {
            None | Some("default") => Ok(None),
            Some("llama3") => {
                let get = |name: &str, v: Option<f64>| {
                    v.filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| format!("rope scaling `llama3` needs a positive {name}"))
                };
                let s = Llama3Scaling {
                    factor: get("factor", p.factor)?,
                    low_freq_factor: get("low_freq_factor", p.low_freq_factor)?,
                    high_freq_factor: get("high_freq_factor", p.high_freq_factor)?,
                    original_max_position_embeddings: get(
                        "original_max_position_embeddings",
                        p.original_max_position_embeddings,
                    )?,
                };
                if s.high_freq_factor <= s.low_freq_factor {
                    return Err(
                        "rope scaling `llama3` needs high_freq_factor above low_freq_factor"
                            .to_string(),
                    );
                }
                Ok(Some(s))
            }
            Some(other) => Err(format!(
                "rope scaling `{other}` is not supported (supported: none, llama3)"
            )),
        }
    }

    /// The model's rotary frequencies: from theta, scaled as the config says (a GGUF file's
    /// factors are applied by the loader, which reads them as a tensor).
    pub fn rope(&self) -> Rope {
        let rope = Rope::new(self.rope_theta(), self.head_dim());
        match self.rope_scaling() {
            Ok(Some(s)) => rope.llama3(&s),
            _ => rope,
        }
    }

    /// [`Self::num_parameters`] in 64 bits, saturating: safe on any config, checked or not.
    fn num_parameters_u64(&self) -> u64 {
        let n = |x: usize| x as u64;
        let (h, i, v) = (
            n(self.hidden_size),
            n(self.intermediate_size),
            n(self.vocab_size),
        );
        let q = n(self.num_attention_heads).saturating_mul(n(self.head_dim()));
        let kv = n(self.num_key_value_heads()).saturating_mul(n(self.head_dim()));
        let layer = h
            .saturating_mul(q.saturating_mul(2).saturating_add(kv.saturating_mul(2)))
            .saturating_add(h.saturating_mul(i).saturating_mul(3))
            .saturating_add(h.saturating_mul(2));
        let head = if self.tie_word_embeddings {
            0
        } else {
            v.saturating_mul(h)
        };
        v.saturating_mul(h)
            .saturating_add(n(self.num_hidden_layers).saturating_mul(layer))
            .saturating_add(h)
            .saturating_add(head)
    }

    /// Rejects what the model code does not implement, so it fails here with a message
    /// instead of giving wrong numbers later.
    pub fn validate(&self, file: &str) -> Result<()> {
        if let Some(t) = &self.model_type
            && t != "llama"
        {
            return Err(Error::config(
                file,
                format!("model_type `{t}` is not supported (supported: {SUPPORTED})"),
            ));
        }
        self.check_shape(file)
    }

    /// [`Self::validate`]'s checks of the decoder itself, whatever family names it: sizes and
    /// limits, heads, activation, rotary scaling, epsilon.
    pub fn check_shape(&self, file: &str) -> Result<()> {
        let bad = |problem: String| Err(Error::config(file, problem));
        // Limits before anything is allocated for them (crate::limits).
        use crate::limits::{MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
        let mut special = self.eos_token_ids();
        special.extend(self.bos_token_id);
        check_sizes(
            file,
            &[
                ("vocab_size", self.vocab_size, MAX_VOCAB),
                ("hidden_size", self.hidden_size, MAX_WIDTH),
                ("intermediate_size", self.intermediate_size, MAX_WIDTH),
                ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
                ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
                ("num_key_value_heads", self.num_key_value_heads(), MAX_HEADS),
                ("head_dim", self.head_dim(), MAX_WIDTH),
            ],
            self.num_parameters_u64(),
            &special,
            self.vocab_size,
        )?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads())
        {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act `{}` is not supported (supported: silu)",
                self.hidden_act
            ));
        }
        self.rope_scaling().map_err(|e| Error::config(file, e))?;
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps is {}; it must be finite and positive",
                self.rms_norm_eps
            ));
        }
        // Rotary frequencies are theta^(-2i/d): a theta of 1 or less, or not finite, gives
        // positions no model was trained with (NaN or constant angles), never an error later.
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 1.0) {
            return bad(format!(
                "rope_theta is {theta}; it must be finite and above 1"
            ));
        }
        Ok(())
    }
}

impl FamilyConfig for LlamaConfig {
    fn model_type(&self) -> &'static str {
        "llama"
    }

    fn architecture(&self) -> &'static str {
        "LlamaForCausalLM"
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.num_hidden_layers
    }

    fn intermediate_size(&self) -> usize {
        self.intermediate_size
    }

    fn attention_heads(&self) -> usize {
        self.num_attention_heads
    }

    fn context_length(&self) -> usize {
        self.max_position_embeddings
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
        LlamaForCausalLM::load(self, self.biases(), ckpt, device, base_f16).map(CausalLM::Llama)
    }

    fn gguf_map(&self) -> Box<dyn GgufTensorMap> {
        Box::new(super::gguf::LlamaGgufMap {
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads(),
            permuted: true,
        })
    }

    fn to_json(&self) -> Result<serde_json::Value> {
        config_json(self)
    }
}
