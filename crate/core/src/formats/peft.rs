//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`, as PEFT's
//! `save_pretrained` writes them and `PeftModel.from_pretrained` reads them.
//!
//! Key names: `base_model.model.<HF module path>.lora_A.weight` `[r, d_in]` and `.lora_B.weight`
//! `[d_out, r]`, whatever the layout the layer stores its weight in.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::HostTensor;
use super::safetensors::SafetensorsCheckpoint;
use crate::error::{Error, Result};
use crate::formats::Checkpoint;
use crate::lora::{LoraBranch, LoraConfig, LoraInit};
use crate::model::CausalLM;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix of every tensor name (`base_model.model.` + the HF module path).
pub const KEY_PREFIX: &str = "base_model.model.";

/// `adapter_config.json` of a LoRA adapter, with the fields PEFT writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha", serialize_with = "whole_as_int")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub target_modules: Option<serde_json::Value>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub init_lora_weights: serde_json::Value,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    /// Fields PEFT writes that webtune does not interpret, kept as they are.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
/// PEFT writes `lora_alpha: 16`, not `16.0`.
fn whole_as_int<S: serde::Serializer>(x: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

fn default_bias() -> String {
    "none".into()
}

/// The two files of an adapter.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    pub config_json: String,
    pub safetensors: Vec<u8>,
}

impl AdapterFiles {
    /// Both files in one ZIP archive, as a folder PEFT's `from_pretrained` can load once unpacked.
    pub fn to_zip(&self) -> Vec<u8> {
        super::zip::write_stored(&[
            (CONFIG_FILE, self.config_json.as_bytes()),
            (WEIGHTS_FILE, &self.safetensors),
        ])
    }
}

/// Storage type of the adapter weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterDtype {
    F32,
    F16,
}

/// The `adapter_config.json` webtune writes for `cfg` (the same fields PEFT writes; `cfg.targets`
/// as given, `fan_in_fan_out` as the family stores its weights).
pub fn config_for(cfg: &LoraConfig, fan_in_fan_out: bool, base_model: &str) -> PeftConfig {
    let mut other = BTreeMap::new();
    // The other fields PEFT 0.21.2 writes, with its defaults, so that the file has exactly PEFT's
    // fields. `peft_version` names the PEFT release whose format this follows.
    let null = serde_json::Value::Null;
    for (k, v) in [
        ("alora_invocation_tokens", null.clone()),
        ("arrow_config", null.clone()),
        ("auto_mapping", null.clone()),
        ("corda_config", null.clone()),
        ("ensure_weight_tying", serde_json::json!(false)),
        ("eva_config", null.clone()),
        ("exclude_modules", null.clone()),
        ("kasa_config", null.clone()),
        ("layer_replication", null.clone()),
        ("layers_pattern", null.clone()),
        ("loftq_config", serde_json::json!({})),
        ("lora_bias", serde_json::json!(false)),
        ("lora_ga_config", null.clone()),
        ("megatron_config", null.clone()),
        ("megatron_core", serde_json::json!("megatron.core")),
        ("monteclora_config", null.clone()),
        ("peft_version", serde_json::json!("0.21.2")),
        ("qalora_group_size", serde_json::json!(16)),
        ("revision", null.clone()),
        ("target_parameters", null.clone()),
        ("trainable_token_indices", null.clone()),
        ("use_bdlora", null.clone()),
        ("use_qalora", serde_json::json!(false)),
        ("velora_config", null),
    ] {
        other.insert(k.to_string(), v);
    }
    PeftConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        r: cfg.r,
        lora_alpha: cfg.alpha,
        use_rslora: cfg.use_rslora,
        lora_dropout: cfg.dropout,
        target_modules: Some(serde_json::json!(cfg.targets)),
        fan_in_fan_out,
        bias: "none".into(),
        base_model_name_or_path: Some(base_model.to_string()),
        inference_mode: true,
        init_lora_weights: match cfg.init {
            LoraInit::Kaiming => serde_json::json!(true),
            LoraInit::Gaussian => serde_json::json!("gaussian"),
        },
        use_dora: false,
        rank_pattern: BTreeMap::new(),
        alpha_pattern: BTreeMap::new(),
        modules_to_save: None,
        layers_to_transform: None,
        other,
    }
}

/// The adapter's tensors in PEFT layout, read back from the device.
pub async fn lora_tensors(model: &CausalLM) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::new();
    for (path, _, proj) in model.projections() {
        let Some(lora) = &proj.lora else { continue };
        let a = read(lora.a.val().transpose()).await?; // [r, d_in]
        let b = read(lora.b.val().transpose()).await?; // [d_out, r]
        out.push((format!("{KEY_PREFIX}{path}.lora_A.weight"), a));
        out.push((format!("{KEY_PREFIX}{path}.lora_B.weight"), b));
    }
    Ok(out)
}

async fn read(t: Tensor<2>) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::Device(format!("reading the adapter back failed: {e:?}")))?;
    let data = data
        .try_to_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading the adapter back failed: {e:?}")))?;
    Ok(HostTensor::new(shape, data))
}

/// Writes the adapter of `model` for `base_model`, with the settings its branches hold.
pub async fn export(
    model: &CausalLM,
    base_model: &str,
    dtype: AdapterDtype,
) -> Result<AdapterFiles> {
    let cfg = crate::lora::settings_of(model)?
        .ok_or_else(|| Error::Invalid("the model has no LoRA layers to export".into()))?;
    let tensors = lora_tensors(model).await?;
    // An adapter with NaN or infinity in it would load everywhere and break every output.
    if let Some((name, _)) = tensors.iter().find(|(_, t)| !t.is_finite()) {
        return Err(Error::NonFinite(format!(
            "the adapter's `{name}` holds NaN or infinite values: it is not written"
        )));
    }
    if dtype == AdapterDtype::F16
        && let Some((name, _)) = tensors.iter().find(|(_, t)| !t.fits_f16())
    {
        return Err(Error::NonFinite(format!(
            "the adapter's `{name}` holds values beyond f16's range: write it in f32"
        )));
    }
    let config = config_for(&cfg, model.fan_in_fan_out(), base_model);
    let config_json = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Invalid(format!("could not write adapter_config.json: {e}")))?;
    Ok(AdapterFiles {
        config_json,
        safetensors: safetensors_bytes(&tensors, dtype)?,
    })
}

/// Serializes tensors with PEFT's header metadata (`{"format": "pt"}`).
pub fn safetensors_bytes(tensors: &[(String, HostTensor)], dtype: AdapterDtype) -> Result<Vec<u8>> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    super::safetensors::write(WEIGHTS_FILE, tensors, dtype == AdapterDtype::F16, metadata)
}

/// A parsed adapter, checked to be a LoRA adapter webtune can apply.
pub struct Adapter {
    pub config: PeftConfig,
    weights: SafetensorsCheckpoint,
}

impl Adapter {
    pub fn parse(config_json: &str, weights: Vec<u8>) -> Result<Self> {
        let config_json = config_json.strip_prefix('\u{feff}').unwrap_or(config_json);
        let config: PeftConfig = serde_json::from_str(config_json)
            .map_err(|e| Error::format(CONFIG_FILE, format!("not a PEFT adapter config: {e}")))?;
        let unsupported = |what: &str| {
            Err(Error::config(
                CONFIG_FILE,
                format!("{what} is not supported by webtune"),
            ))
        };
        if config.peft_type != "LORA" {
            return unsupported(&format!("peft_type `{}`", config.peft_type));
        }
        if config.use_dora {
            return unsupported("DoRA (use_dora)");
        }
        if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
            return unsupported("a per-module rank_pattern / alpha_pattern");
        }
        if config.bias != "none" {
            return unsupported(&format!("bias `{}`", config.bias));
        }
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_null())
        {
            return unsupported("modules_to_save");
        }
        let weights = SafetensorsCheckpoint::single(WEIGHTS_FILE, weights)?;
        let adapter = Self { config, weights };
        adapter
            .lora_config()
            .validate()
            .map_err(|e| Error::config(CONFIG_FILE, e))?;
        Ok(adapter)
    }

    /// The LoRA settings the adapter was made with.
    pub fn lora_config(&self) -> LoraConfig {
        let targets = self
            .weights
            .names()
            .iter()
            .filter_map(|k| k.strip_suffix(".lora_A.weight"))
            .filter_map(|p| p.rsplit('.').next())
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        LoraConfig {
            r: self.config.r,
            alpha: self.config.lora_alpha,
            dropout: self.config.lora_dropout,
            targets,
            use_rslora: self.config.use_rslora,
            init: LoraInit::Kaiming,
        }
    }

    /// Puts the adapter's A and B into `model` (trainable, so training can continue). Refuses an
    /// adapter made for another base: unknown modules, other shapes, another rank.
    pub fn apply(&self, model: &mut CausalLM) -> Result<()> {
        let cfg = self.lora_config();
        // PEFT itself turns fan_in_fan_out on for Conv1D layers, but would transpose a Linear's
        // update by it: wrong numbers, so refuse it.
        if self.config.fan_in_fan_out && !model.fan_in_fan_out() {
            return Err(Error::config(
                CONFIG_FILE,
                "fan_in_fan_out is set, but this model's layers are not Conv1D: the adapter \
                 was made for another kind of model",
            ));
        }
        let mut used = 0;
        let mismatch = |problem: String| {
            Err(Error::config(
                WEIGHTS_FILE,
                format!("{problem}: the adapter does not fit this base model"),
            ))
        };
        let mut branches = Vec::new();
        for (path, _, proj) in model.projections() {
            let key_a = format!("{KEY_PREFIX}{path}.lora_A.weight");
            let key_b = format!("{KEY_PREFIX}{path}.lora_B.weight");
            let (a_shape, b_shape) = (self.weights.shape(&key_a), self.weights.shape(&key_b));
            match (a_shape, b_shape) {
                (None, None) => branches.push(None),
                (Some(a), Some(b)) => {
                    let [d_in, d_out] = proj.dims();
                    let r = cfg.r;
                    if a != [r, d_in] || b != [d_out, r] {
                        return mismatch(format!(
                            "{path}: lora_A is {a:?} and lora_B is {b:?}, but rank {r} on this \
                             model needs [{r}, {d_in}] and [{d_out}, {r}]"
                        ));
                    }
                    used += 2;
                    let (a, b) = (self.weights.load(&key_a)?, self.weights.load(&key_b)?);
                    for (key, t) in [(&key_a, &a), (&key_b, &b)] {
                        if !t.is_finite() {
                            return Err(Error::format(
                                WEIGHTS_FILE,
                                format!("`{key}` holds NaN or infinite values"),
                            ));
                        }
                    }
                    branches.push(Some((a, b)));
                }
                _ => return mismatch(format!("{path} has only one of lora_A / lora_B")),
            }
        }
        let total = self.weights.names().len();
        if used != total {
            let mut unknown: Vec<&str> = self
                .weights
                .names()
                .into_iter()
                .filter(|k| {
                    !model
                        .projections()
                        .iter()
                        .any(|(p, _, _)| k.starts_with(&format!("{KEY_PREFIX}{p}.")))
                })
                .collect();
            unknown.sort_unstable();
            return mismatch(match unknown.first() {
                Some(first) => format!(
                    "{} tensors name modules this model does not have (e.g. {first})",
                    unknown.len()
                ),
                None => format!(
                    "{} of its tensors are not the lora_A / lora_B weights of a projection",
                    total - used
                ),
            });
        }
        for ((_, _, proj), branch) in model.projections_mut().into_iter().zip(branches) {
            proj.lora = branch.map(|(a, b)| {
                let device = proj.device();
                let a = host_to_burn(a.transposed(), &device); // [d_in, r]
                let b = host_to_burn(b.transposed(), &device); // [r, d_out]
                LoraBranch::from_tensors(a, b, &cfg)
            });
        }
        Ok(())
    }
}

fn host_to_burn(t: HostTensor, device: &burn::tensor::Device) -> Tensor<2> {
    let shape = [t.shape[0], t.shape[1]];
    Tensor::<2>::from_data(TensorData::new(t.data, shape), device)
}
