//! LoRA adapters for llama.cpp (`llama-cli -m base.gguf --lora adapter.gguf`), written as
//! llama.cpp's `convert_lora_to_gguf.py` writes them:
//!
//! - metadata: `general.architecture` (the base's: `llama`), `general.type` = `adapter`, `adapter.type` =
//!   `lora`, `adapter.lora.alpha` (f32), `general.name`;
//! - tensors: for each adapted projection, `blk.N.<name>.weight.lora_a` holding PEFT's A
//!   (`[r, d_in]`) and `.lora_b` holding PEFT's B (`[d_out, r]`), F32 or F16 (GGUF lists the
//!   dimensions fastest-first: `[d_in, r]`, `[r, d_out]`);
//! - B's rows are the base weight's output rows, in the order the GGUF base holds them (the
//!   family's [`GgufTensorMap::lora_b_to_gguf`]: for Llama, q_proj / k_proj rows permuted as
//!   llama.cpp permutes the base's, the two rotary halves of each head interleaved); A is
//!   unchanged.
//!
//! llama.cpp scales a branch by alpha / r. With rsLoRA (alpha / sqrt(r)) the alpha written is
//! alpha * sqrt(r), so that llama.cpp applies the scale the adapter was trained with.

use super::gguf::{GgufTensorMap, Value};
use super::gguf_writer::{self, TensorEntry};
use super::peft::{AdapterDtype, lora_tensors};
use crate::error::{Error, Result};
use crate::model::{CausalLM, ModelConfig};

/// The file name the page and the CLI give the adapter.
pub const FILE_SUFFIX: &str = "-lora.gguf";

/// The GGUF LoRA adapter of `model` (a base described by `config`, with LoRA branches).
pub async fn export(
    model: &CausalLM,
    config: &ModelConfig,
    base_name: &str,
    dtype: AdapterDtype,
) -> Result<Vec<u8>> {
    let lora = crate::lora::settings_of(model)?
        .ok_or_else(|| Error::Invalid("the model has no LoRA layers to export".into()))?;
    let map: Box<dyn GgufTensorMap> = config.gguf_map();
    let tensors = lora_tensors(model).await?;
    let mut entries = Vec::with_capacity(tensors.len());
    for (key, t) in tensors {
        if !t.is_finite() {
            return Err(Error::NonFinite(format!(
                "the adapter's `{key}` holds NaN or infinite values: it is not written"
            )));
        }
        if dtype == AdapterDtype::F16 && !t.fits_f16() {
            return Err(Error::NonFinite(format!(
                "the adapter's `{key}` holds values beyond f16's range: write it in f32"
            )));
        }
        // base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        //   -> model.layers.0.self_attn.q_proj.weight -> blk.0.attn_q.weight
        let (hf, suffix) = match key.strip_suffix(".lora_A.weight") {
            Some(p) => (p, "lora_a"),
            None => match key.strip_suffix(".lora_B.weight") {
                Some(p) => (p, "lora_b"),
                None => continue,
            },
        };
        let hf = format!("{}.weight", hf.trim_start_matches(super::peft::KEY_PREFIX));
        let gguf = map.gguf_name(&hf).ok_or_else(|| {
            Error::Invalid(format!(
                "`{hf}` has no llama.cpp name: it cannot be exported to GGUF"
            ))
        })?;
        let t = if suffix == "lora_b" {
            map.lora_b_to_gguf(&hf, t)
                .map_err(|problem| Error::Invalid(format!("`{hf}`'s LoRA B {problem}")))?
        } else {
            t
        };
        let name = format!("{gguf}.{suffix}");
        entries.push(match dtype {
            AdapterDtype::F32 => TensorEntry::f32(name, t.shape, &t.data),
            AdapterDtype::F16 => TensorEntry::f16(name, t.shape, &t.data),
        });
    }
    let alpha = if lora.use_rslora {
        lora.alpha * (lora.r as f64).sqrt()
    } else {
        lora.alpha
    };
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(config.model_type().into()),
        ),
        ("general.type".to_string(), Value::String("adapter".into())),
        (
            "general.name".to_string(),
            Value::String(format!("{base_name} LoRA")),
        ),
        ("adapter.type".to_string(), Value::String("lora".into())),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha as f32)),
    ];
    Ok(gguf_writer::write(&metadata, &entries))
}
