//! The Llama-family configuration: HF `config.json` field names, or the same values read from
//! GGUF metadata.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::Checkpoint;
use crate::formats::gguf::{GgufFile, GgufTensorMap};
use crate::model::config::{FamilyConfig, SUPPORTED, TokenIds};
use crate::model::{CausalLM, LlamaForCausalLM};

/// transformers 5 moved `rope_theta` into `rope_parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_type: Option<String>,
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

    /// Reads the `llama.*` metadata of a GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let file = gguf.file_name.as_str();
        let arch = gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::config(file, "general.architecture is missing"))?;
        if arch != "llama" {
            return Err(Error::config(
                file,
                format!("architecture `{arch}` is not supported (supported: {SUPPORTED})"),
            ));
        }
        // Counts are u64 in the file and usize (32 bits on wasm32) here: never truncate.
        let size = |key: &str, v: u64| -> Result<usize> {
            usize::try_from(v).map_err(|_| Error::config(file, format!("{key} is {v}: too large")))
        };
        let int = |key: &str| -> Result<usize> {
            let v = gguf
                .get(&format!("llama.{key}"))
                .and_then(|v| v.as_u64())
                .ok_or_else(|| Error::config(file, format!("llama.{key} is missing")))?;
            size(&format!("llama.{key}"), v)
        };
        let float = |key: &str| gguf.get(&format!("llama.{key}")).and_then(|v| v.as_f64());
        let embd = gguf
            .tensor_info("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor {
                file: file.to_string(),
                tensor: "token_embd.weight".to_string(),
            })?;
        let vocab_size = match gguf.get("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => size("llama.vocab_size", v)?,
            None => embd.shape.first().copied().unwrap_or(0),
        };
        let hidden_size = int("embedding_length")?;
        let num_attention_heads = int("attention.head_count")?;
        let num_key_value_heads = int("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = gguf
            .get("llama.attention.key_length")
            .or_else(|| gguf.get("llama.rope.dimension_count"))
            .and_then(|v| v.as_u64())
            .map(|v| size("llama.attention.key_length", v))
            .transpose()?;
        let token = |key: &str| -> Result<Option<u32>> {
            let key = format!("tokenizer.ggml.{key}");
            gguf.get(&key)
                .and_then(|v| v.as_u64())
                .map(|v| {
                    u32::try_from(v)
                        .map_err(|_| Error::config(file, format!("{key} is {v}: too large")))
                })
                .transpose()
        };
        let config = LlamaConfig {
            model_type: Some("llama".to_string()),
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: Some(float("rope.freq_base").unwrap_or(DEFAULT_ROPE_THETA)),
            rope_parameters: None,
            rope_scaling: gguf
                .get("llama.rope.scaling.type")
                .and_then(|v| v.as_str())
                .filter(|t| *t != "none")
                .map(|t| serde_json::json!({ "rope_type": t })),
            max_position_embeddings: int("context_length").unwrap_or(2048),
            tie_word_embeddings: gguf.tensor_info("output.weight").is_none(),
            bos_token_id: token("bos_token_id")?,
            eos_token_id: token("eos_token_id")?.map(TokenIds::One),
            hidden_act: "silu".to_string(),
            attention_bias: false,
            mlp_bias: false,
        };
        config.validate(file)?;
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
        let bad = |problem: String| Err(Error::config(file, problem));
        if let Some(t) = &self.model_type
            && t != "llama"
        {
            return bad(format!(
                "model_type `{t}` is not supported (supported: {SUPPORTED})"
            ));
        }
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads()),
            ("head_dim", self.head_dim()),
        ] {
            if value == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        // Limits before anything is allocated for them (crate::limits).
        use crate::limits::{MAX_HEADS, MAX_LAYERS, MAX_PARAMETERS, MAX_VOCAB, MAX_WIDTH};
        for (name, value, max) in [
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("head_dim", self.head_dim(), MAX_WIDTH),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads(), MAX_HEADS),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
        ] {
            if value > max {
                return bad(format!(
                    "{name} is {value}, more than webtune supports ({max})"
                ));
            }
        }
        let parameters = self.num_parameters_u64();
        if parameters > MAX_PARAMETERS {
            return bad(format!(
                "the config describes {parameters} parameters, more than webtune supports \
                 ({MAX_PARAMETERS})"
            ));
        }
        let mut special = self
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default();
        special.extend(self.bos_token_id);
        if let Some(id) = special.iter().find(|&&id| id as usize >= self.vocab_size) {
            return bad(format!(
                "the BOS/EOS token id {id} is outside the vocabulary ({} tokens)",
                self.vocab_size
            ));
        }
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
        if self.attention_bias || self.mlp_bias {
            return bad("attention_bias / mlp_bias are not supported".to_string());
        }
        let rope_type = self
            .rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|v| {
                v.get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("unknown")
                    .to_string()
            })
            .or_else(|| {
                self.rope_parameters
                    .as_ref()
                    .and_then(|p| p.rope_type.clone())
            });
        if let Some(t) = rope_type
            && t != "default"
        {
            return bad(format!(
                "rope scaling `{t}` is not supported (only unscaled rotary embeddings)"
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return bad("rms_norm_eps must be positive".to_string());
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

    fn load(&self, ckpt: &dyn Checkpoint, device: &Device) -> Result<CausalLM> {
        LlamaForCausalLM::load(self, ckpt, device).map(CausalLM::Llama)
    }

    fn gguf_map(&self) -> Box<dyn GgufTensorMap> {
        Box::new(super::gguf::LlamaGgufMap {
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads(),
        })
    }

    fn to_json(&self) -> Result<serde_json::Value> {
        let mut json = serde_json::to_value(self)
            .map_err(|e| Error::Invalid(format!("could not write config.json: {e}")))?;
        json["model_type"] = serde_json::json!("llama");
        json["architectures"] = serde_json::json!([self.architecture()]);
        Ok(json)
    }
}
