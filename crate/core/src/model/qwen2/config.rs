//! The Qwen2 configuration: transformers' `Qwen2Config` field names, or the same values from a
//! GGUF file's `qwen2.*` metadata.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::Checkpoint;
use crate::formats::gguf::{GgufFile, GgufTensorMap};
use crate::model::config::{FamilyConfig, config_json};
use crate::model::llama::gguf::LlamaGgufMap;
use crate::model::llama::{Biases, LlamaConfig};
use crate::model::{CausalLM, LlamaForCausalLM};

/// `Qwen2Config` as in transformers' `config.json`: the decoder's shape is Llama's (the fields
/// Llama's config reads), plus Qwen2's sliding-window fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    #[serde(flatten)]
    pub decoder: LlamaConfig,
    /// Sliding-window attention on some layers: webtune attends over the whole window only.
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
}

/// Qwen2's projections with a bias: q, k and v.
const BIASES: Biases = Biases {
    qkv: true,
    o: false,
    mlp: false,
};

impl Qwen2Config {
    /// Parses `config.json` and checks that webtune can run the model it describes.
    pub fn from_json(file: &str, json: &str) -> Result<Self> {
        let config: Qwen2Config = serde_json::from_str(json)
            .map_err(|e| Error::config(file, format!("not a valid Qwen2 config.json: {e}")))?;
        config.validate(file)?;
        Ok(config)
    }

    /// Reads the `qwen2.*` metadata of a GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let mut decoder = LlamaConfig::from_gguf_keys(gguf, "qwen2")?;
        // Qwen2's q/k/v biases are part of the family, not a choice of the file.
        decoder.attention_bias = false;
        decoder.mlp_bias = false;
        let config = Self {
            decoder,
            use_sliding_window: false,
            sliding_window: None,
            max_window_layers: None,
        };
        config.validate(&gguf.file_name)?;
        Ok(config)
    }

    pub fn validate(&self, file: &str) -> Result<()> {
        if let Some(t) = &self.decoder.model_type
            && t != "qwen2"
        {
            return Err(Error::config(
                file,
                format!("model_type `{t}` is not qwen2"),
            ));
        }
        if self.use_sliding_window {
            return Err(Error::config(
                file,
                "use_sliding_window is true: sliding-window attention is not supported",
            ));
        }
        if self.decoder.attention_bias || self.decoder.mlp_bias {
            return Err(Error::config(
                file,
                "attention_bias / mlp_bias are not Qwen2 settings (its q, k, v biases always are)",
            ));
        }
        self.decoder.check_shape(file)
    }
}

impl FamilyConfig for Qwen2Config {
    fn model_type(&self) -> &'static str {
        "qwen2"
    }

    fn architecture(&self) -> &'static str {
        "Qwen2ForCausalLM"
    }

    fn vocab_size(&self) -> usize {
        self.decoder.vocab_size()
    }

    fn hidden_size(&self) -> usize {
        self.decoder.hidden_size()
    }

    fn num_layers(&self) -> usize {
        self.decoder.num_layers()
    }

    fn intermediate_size(&self) -> usize {
        self.decoder.intermediate_size
    }

    fn attention_heads(&self) -> usize {
        self.decoder.num_attention_heads
    }

    fn context_length(&self) -> usize {
        self.decoder.context_length()
    }

    fn tied_embeddings(&self) -> bool {
        self.decoder.tied_embeddings()
    }

    fn num_parameters(&self) -> usize {
        // Llama's count, and the q, k, v biases.
        let d = &self.decoder;
        let biases = (d.num_attention_heads + 2 * d.num_key_value_heads()) * d.head_dim();
        d.num_parameters()
            .saturating_add(d.num_hidden_layers.saturating_mul(biases))
    }

    fn eos_token_ids(&self) -> Vec<u32> {
        self.decoder.eos_token_ids()
    }

    fn load_with(
        &self,
        ckpt: &dyn Checkpoint,
        device: &Device,
        base_f16: bool,
    ) -> Result<CausalLM> {
        LlamaForCausalLM::load(&self.decoder, BIASES, ckpt, device, base_f16).map(CausalLM::Llama)
    }

    fn gguf_map(&self) -> Box<dyn GgufTensorMap> {
        Box::new(LlamaGgufMap {
            num_heads: self.decoder.num_attention_heads,
            num_kv_heads: self.decoder.num_key_value_heads(),
            permuted: false,
        })
    }

    fn to_json(&self) -> Result<serde_json::Value> {
        config_json(self)
    }
}
