//! A model's configuration, whichever its family: picked from `config.json`'s `model_type` or a
//! GGUF file's `general.architecture`.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{CausalLM, Gpt2Config, LlamaConfig, Qwen2Config};
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
    /// The MLP's inner width.
    fn intermediate_size(&self) -> usize;
    /// Query heads.
    fn attention_heads(&self) -> usize;
    fn context_length(&self) -> usize;
    fn tied_embeddings(&self) -> bool;
    /// Parameters of the model, embeddings included (a tied head counted once).
    fn num_parameters(&self) -> usize;
    /// The config's end-of-sequence ids.
    fn eos_token_ids(&self) -> Vec<u32>;
    /// The model with its weights from `ckpt` (HF names), every weight frozen.
    fn load(&self, ckpt: &dyn Checkpoint, device: &Device) -> Result<CausalLM> {
        self.load_with(ckpt, device, false)
    }
    /// [`Self::load`]; with `base_f16`, each frozen matrix kept in f16 as it is read (on the CPU
    /// backend: `CausalLM::with_base_in_f16`), so that the f32 model never exists whole.
    fn load_with(&self, ckpt: &dyn Checkpoint, device: &Device, base_f16: bool)
    -> Result<CausalLM>;
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
    Qwen2(Qwen2Config),
}

/// The families webtune runs, by `model_type` / `general.architecture`.
pub const SUPPORTED: &str = "llama, gpt2, qwen2";

impl ModelConfig {
    pub fn family(&self) -> &(dyn FamilyConfig + 'static) {
        match self {
            Self::Llama(c) => c,
            Self::Gpt2(c) => c,
            Self::Qwen2(c) => c,
        }
    }

    /// Parses `config.json` for the family its `model_type` names (Llama when it names none), and
    /// checks that webtune can run the model it describes.
    pub fn from_json(file: &str, json: &str) -> Result<Self> {
        // A byte-order mark some editors write is not JSON.
        let json = json.strip_prefix('\u{feff}').unwrap_or(json);
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::config(file, format!("not valid JSON: {e}")))?;
        let model_type =
            match value.get("model_type") {
                None | Some(serde_json::Value::Null) => {
                    // Older Llama configs name no model_type; anything else is not one.
                    return LlamaConfig::from_json(file, json).map(Self::Llama).map_err(|e| {
                    Error::config(
                        file,
                        format!(
                            "it names no model_type, and it is not a Llama config ({e}): give \
                             the model's config.json with its model_type (supported: {SUPPORTED})"
                        ),
                    )
                });
                }
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
            "qwen2" => Ok(Self::Qwen2(Qwen2Config::from_json(file, json)?)),
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
            "qwen2" => Ok(Self::Qwen2(Qwen2Config::from_gguf(gguf)?)),
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

/// The checks every family's config makes before anything is allocated for it: each size is
/// nonzero and within its limit ([`crate::limits`], `(name, value, max)` with the `config.json`
/// name), the whole model within [`crate::limits::MAX_PARAMETERS`], and the BOS/EOS ids inside
/// the vocabulary.
pub(crate) fn check_sizes(
    file: &str,
    sizes: &[(&str, usize, usize)],
    parameters: u64,
    special_ids: &[u32],
    vocab_size: usize,
) -> Result<()> {
    let bad = |problem: String| Err(Error::config(file, problem));
    if let Some((name, _, _)) = sizes.iter().find(|(_, value, _)| *value == 0) {
        return bad(format!("{name} is 0"));
    }
    if let Some((name, value, max)) = sizes.iter().find(|(_, value, max)| value > max) {
        return bad(format!(
            "{name} is {value}, more than webtune supports ({max})"
        ));
    }
    let max = crate::limits::MAX_PARAMETERS;
    if parameters > max {
        return bad(format!(
            "the config describes {parameters} parameters, more than webtune supports ({max})"
        ));
    }
    if let Some(id) = special_ids.iter().find(|&&id| id as usize >= vocab_size) {
        return bad(format!(
            "the BOS/EOS token id {id} is outside the vocabulary ({vocab_size} tokens)"
        ));
    }
    Ok(())
}

/// `config.json` for a family's config: its fields, its `model_type` and transformers' class.
pub(crate) fn config_json<C: Serialize + FamilyConfig>(config: &C) -> Result<serde_json::Value> {
    let mut json = serde_json::to_value(config)
        .map_err(|e| Error::Invalid(format!("could not write config.json: {e}")))?;
    json["model_type"] = serde_json::json!(config.model_type());
    json["architectures"] = serde_json::json!([config.architecture()]);
    Ok(json)
}

/// A GGUF file's hyperparameters under `{arch}.` and its tokenizer ids, read as sizes that fit
/// this machine (u64 in the file, usize here: 32 bits on wasm32; never truncated).
pub(crate) struct GgufParams<'a> {
    pub gguf: &'a GgufFile,
    pub arch: &'a str,
}

impl GgufParams<'_> {
    fn file(&self) -> &str {
        &self.gguf.file_name
    }

    fn size(&self, key: &str, v: u64) -> Result<usize> {
        usize::try_from(v)
            .map_err(|_| Error::config(self.file(), format!("{key} is {v}: too large")))
    }

    /// `{arch}.{key}`, which must be there.
    pub fn int(&self, key: &str) -> Result<usize> {
        self.int_opt(key)?
            .ok_or_else(|| Error::config(self.file(), format!("{}.{key} is missing", self.arch)))
    }

    /// `{arch}.{key}`, when there.
    pub fn int_opt(&self, key: &str) -> Result<Option<usize>> {
        let key = format!("{}.{key}", self.arch);
        self.gguf
            .get(&key)
            .and_then(|v| v.as_u64())
            .map(|v| self.size(&key, v))
            .transpose()
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        self.gguf
            .get(&format!("{}.{key}", self.arch))
            .and_then(|v| v.as_f64())
    }

    /// `tokenizer.ggml.{key}` (e.g. `eos_token_id`), when there.
    pub fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let key = format!("tokenizer.ggml.{key}");
        self.gguf
            .get(&key)
            .and_then(|v| v.as_u64())
            .map(|v| {
                u32::try_from(v)
                    .map_err(|_| Error::config(self.file(), format!("{key} is {v}: too large")))
            })
            .transpose()
    }

    /// The vocabulary: the token embedding's rows.
    pub fn embedding_rows(&self) -> Result<usize> {
        let embd =
            self.gguf
                .tensor_info("token_embd.weight")
                .ok_or_else(|| Error::MissingTensor {
                    file: self.file().to_string(),
                    tensor: "token_embd.weight".to_string(),
                })?;
        Ok(embd.shape.first().copied().unwrap_or(0))
    }
}
