//! A model's configuration, whichever its family: picked from `config.json`'s `model_type` or a
//! GGUF file's `general.architecture`.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{CausalLM, Gpt2Config, LlamaConfig};
use crate::error::{Error, Result};
use crate::formats::Checkpoint;
use crate::formats::gguf::{GgufFile, GgufTensorMap};

/// `eos_token_id` is an integer or a list of integers in HF configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// What every family's configuration gives the rest of webtune.
pub trait FamilyConfig {
    /// The family's `model_type` (`llama`, `gpt2`).
    fn model_type(&self) -> &'static str;
    /// transformers' class for it (`LlamaForCausalLM`), as `config.json` lists it.
    fn architecture(&self) -> &'static str;
    fn vocab_size(&self) -> usize;
    fn hidden_size(&self) -> usize;
    fn num_layers(&self) -> usize;
    fn context_length(&self) -> usize;
    fn tied_embeddings(&self) -> bool;
    /// Parameters of the model, embeddings included (a tied head counted once).
    fn num_parameters(&self) -> usize;
    /// The config's end-of-sequence ids.
    fn eos_token_ids(&self) -> Vec<u32>;
    /// The model with its weights from `ckpt` (HF names), every weight frozen.
    fn load(&self, ckpt: &dyn Checkpoint, device: &Device) -> Result<CausalLM>;
    /// How this family's tensors are named and laid out in GGUF.
    fn gguf_map(&self) -> Box<dyn GgufTensorMap>;
    /// `config.json` for this config.
    fn to_json(&self) -> Result<serde_json::Value>;
}

/// The configuration of a model of any supported family.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Llama(LlamaConfig),
    Gpt2(Gpt2Config),
}

/// The families webtune runs, by `model_type` / `general.architecture`.
pub const SUPPORTED: &str = "llama, gpt2";

impl ModelConfig {
    pub fn family(&self) -> &(dyn FamilyConfig + 'static) {
        match self {
            Self::Llama(c) => c,
            Self::Gpt2(c) => c,
        }
    }

    /// Parses `config.json` for the family its `model_type` names (Llama when it names none), and
    /// checks that webtune can run the model it describes.
    pub fn from_json(file: &str, json: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::config(file, format!("not valid JSON: {e}")))?;
        let model_type = match value.get("model_type") {
            None | Some(serde_json::Value::Null) => "llama".to_string(),
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(other) => {
                return Err(Error::config(
                    file,
                    format!("model_type is {other}, not a name"),
                ));
            }
        };
        match model_type.as_str() {
            "llama" => Ok(Self::Llama(LlamaConfig::from_json(file, json)?)),
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_json(file, json)?)),
            other => Err(Error::config(
                file,
                format!("model_type `{other}` is not supported (supported: {SUPPORTED})"),
            )),
        }
    }

    /// Reads a GGUF file's hyperparameters for the family its `general.architecture` names.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let file = gguf.file_name.as_str();
        let arch = gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::config(file, "general.architecture is missing"))?;
        match arch {
            "llama" => Ok(Self::Llama(LlamaConfig::from_gguf(gguf)?)),
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_gguf(gguf)?)),
            other => Err(Error::config(
                file,
                format!("architecture `{other}` is not supported (supported: {SUPPORTED})"),
            )),
        }
    }
}

impl std::ops::Deref for ModelConfig {
    type Target = dyn FamilyConfig;

    fn deref(&self) -> &Self::Target {
        self.family()
    }
}
