//! A merged model: the adapter folded into the base weights (W0 + s·B·A, [`crate::lora::merge`]),
//! for people who want one model file. Two forms:
//!
//! - a Hugging Face folder: `model.safetensors` (f32), `config.json`, `tokenizer.json`,
//!   `tokenizer_config.json`, loadable by transformers and by webtune;
//! - a GGUF file (F16 matrices, F32 norms, as llama.cpp's converter writes `--outtype f16`), with
//!   the base GGUF's metadata (hyperparameters, tokenizer, chat template): for bases loaded from
//!   GGUF.

use std::collections::HashMap;

use burn::tensor::Tensor;

use super::HostTensor;
use super::gguf::Value;
use super::gguf_writer::{self, TensorEntry};
use crate::base_model::BaseModel;
use crate::error::{Error, Result};
use crate::model::CausalLM;

/// ggml's `LLAMA_FTYPE_MOSTLY_F16`.
const FILE_TYPE_F16: u32 = 1;

/// `model` (base + LoRA branches) with its branches folded in, weights read back to the host
/// under their HF names and layouts.
async fn merged_tensors(model: &CausalLM) -> Result<Vec<(String, HostTensor)>> {
    // Without autodiff: merging is arithmetic on weights, not part of any graph.
    let mut merged = burn::module::Module::valid(model);
    crate::lora::merge(&mut merged);
    let mut out = Vec::new();
    for (name, shape, t) in merged.hf_tensors() {
        let data = read(t).await?;
        if data.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the merged `{name}` holds NaN or infinite values: it is not written"
            )));
        }
        out.push((name, HostTensor::new(shape, data)));
    }
    Ok(out)
}

async fn read(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data_async()
        .await
        .map_err(|e| Error::Device(format!("reading the model back failed: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading the model back failed: {e:?}")))
}

/// The merged model as a Hugging Face folder: `(file name, bytes)` pairs.
pub async fn hf_files(base: &BaseModel, model: &CausalLM) -> Result<Vec<(String, Vec<u8>)>> {
    let tensors = merged_tensors(model).await?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = super::safetensors::write("model.safetensors", &tensors, false, metadata)?;

    let mut config = base.config.to_json()?;
    config["torch_dtype"] = serde_json::json!("float32");
    let config = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Invalid(format!("could not write config.json: {e}")))?;
    Ok(vec![
        ("config.json".into(), config.into_bytes()),
        ("model.safetensors".into(), weights),
        (
            "tokenizer.json".into(),
            base.tokenizer.to_json()?.into_bytes(),
        ),
        (
            "tokenizer_config.json".into(),
            base.tokenizer.config_json().into_bytes(),
        ),
    ])
}

/// The merged model as one GGUF file (F16 matrices): for a base loaded from GGUF, whose metadata
/// it keeps.
pub async fn gguf_f16(base: &BaseModel, model: &CausalLM) -> Result<Vec<u8>> {
    let source = base.gguf_metadata.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: a merged GGUF is written for models loaded from a GGUF file; this one came from \
             Hugging Face files: write the merged Hugging Face folder and convert it with \
             llama.cpp's convert_hf_to_gguf.py",
            base.name
        ))
    })?;
    let mut metadata: Vec<(String, Value)> = source
        .iter()
        .filter(|(k, _)| k != "general.file_type" && k != "general.name")
        .cloned()
        .collect();
    metadata.push((
        "general.name".into(),
        Value::String(format!("{} (merged)", base.name)),
    ));
    metadata.push(("general.file_type".into(), Value::U32(FILE_TYPE_F16)));

    let map = base.config.gguf_map();
    let mut entries = Vec::new();
    for (hf, t) in merged_tensors(model).await? {
        let name = map
            .gguf_name(&hf)
            .ok_or_else(|| Error::Invalid(format!("`{hf}` has no llama.cpp name")))?;
        let t = map
            .hf_to_gguf(&hf, t)
            .map_err(|problem| Error::Invalid(format!("`{hf}` {problem}")))?;
        if t.shape.len() > 1 && !t.fits_f16() {
            return Err(Error::NonFinite(format!(
                "the merged `{hf}` holds values beyond f16's range: write the merged Hugging \
                 Face folder (f32) instead"
            )));
        }
        // 1-D tensors (the norms) stay F32, as llama.cpp's converter keeps them.
        entries.push(if t.shape.len() == 1 {
            TensorEntry::f32(name, t.shape, &t.data)
        } else {
            TensorEntry::f16(name, t.shape, &t.data)
        });
    }
    Ok(gguf_writer::write(&metadata, &entries))
}
