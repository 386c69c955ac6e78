//! Checkpoints: a run saved whole, so that it continues exactly where it was after a reload, a
//! crash, a backend switch or a lost GPU (the page), or an interrupted command (`train --resume`).
//!
//! One safetensors file. Tensors, f32, in burn's layouts: `{module}.lora_A` (A^T, `[d_in, r]`),
//! `{module}.lora_B` (B^T, `[r, d_out]`), and AdamW's `{matrix}.exp_avg` / `{matrix}.exp_avg_sq`,
//! where `{module}` is the HF module path (`model.layers.0.self_attn.q_proj`). The header's
//! metadata holds, under `webtune.checkpoint`, a JSON [`RunState`]: settings, step, the data
//! order, AdamW's step count, timings and the progress history.
//!
//! A checkpoint resumes only with the same base model and the same texts: the texts' windows
//! are fingerprinted, and a mismatch is refused with a message.

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::{BatchOrder, Dataset};
use crate::error::{Error, Result};
use crate::formats::safetensors::SafetensorsCheckpoint;
use crate::formats::{Checkpoint as _, HostTensor};
use crate::model::CausalLM;
use crate::spec::RunSpec;
use crate::train::Progress;

/// The file name a checkpoint is written under (in a folder, or in the page's storage).
pub const FILE_NAME: &str = "checkpoint.safetensors";
const META_KEY: &str = "webtune.checkpoint";
/// The run state's format: 2 holds the whole [`RunSpec`]; 1 (read, never written) held the
/// training settings with the window length and validation share beside them.
pub const FORMAT: u32 = 2;

/// Everything about a run that is not a tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    /// The base model's name, as the session shows it.
    pub base_model: String,
    /// The run's settings, whole.
    pub spec: RunSpec,
    /// [`fingerprint`] of the windows the run trains and evaluates on.
    pub data_fingerprint: String,
    pub step: usize,
    pub tokens_seen: usize,
    /// Targets learned so far (absent before chat data: every target was).
    #[serde(default)]
    pub learned_tokens: usize,
    pub train_secs: f64,
    pub eval_secs: f64,
    pub evals: usize,
    pub order: BatchOrder,
    pub optimizer_steps: u64,
    pub history: Vec<Progress>,
}

/// A run's tensors, read back from the device: LoRA matrices and AdamW moments by name.
pub struct RunTensors {
    pub tensors: Vec<(String, HostTensor)>,
}

/// A 64-bit FNV-1a digest of the windows (train, then validation), as hex.
pub fn fingerprint(data: &Dataset) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(data.seq_len as u64);
    for set in [&data.train, &data.val] {
        eat(set.len() as u64);
        for w in set {
            w.iter().for_each(|&t| eat(u64::from(t)));
        }
    }
    format!("{h:016x}")
}

/// Serializes a checkpoint.
pub fn to_bytes(state: &RunState, tensors: &RunTensors) -> Result<Vec<u8>> {
    let json = serde_json::to_string(state)
        .map_err(|e| Error::Invalid(format!("could not write the checkpoint: {e}")))?;
    let metadata = HashMap::from([(META_KEY.to_string(), json)]);
    crate::formats::safetensors::write(FILE_NAME, &tensors.tensors, false, metadata)
}

/// A parsed checkpoint file.
pub struct CheckpointFile {
    pub state: RunState,
    file: SafetensorsCheckpoint,
}

impl CheckpointFile {
    /// Parses `bytes` (named `name` in messages).
    pub fn parse(name: &str, bytes: Vec<u8>) -> Result<Self> {
        let file = SafetensorsCheckpoint::single(name, bytes)?;
        let json = file
            .metadata_entry(META_KEY)
            .ok_or_else(|| Error::format(name, "not a webtune checkpoint (no run state in it)"))?;
        let state = parse_state(json).map_err(|e| {
            Error::format(name, format!("the checkpoint's run state is broken: {e}"))
        })?;
        if state.format != FORMAT {
            return Err(Error::format(
                name,
                format!(
                    "checkpoint format {} is not supported (this webtune reads {FORMAT} and 1)",
                    state.format
                ),
            ));
        }
        state.spec.validate().map_err(|e| Error::config(name, e))?;
        if state.step > state.spec.train.steps {
            return Err(Error::format(
                name,
                format!(
                    "step {} is beyond the run's {} steps",
                    state.step, state.spec.train.steps
                ),
            ));
        }
        Ok(Self { state, file })
    }

    pub fn file_name(&self) -> &str {
        self.file.file_name()
    }

    /// A tensor with the shape `shape`, on `device` (without autodiff: as the optimizer keeps
    /// its state; callers add autodiff for parameters).
    pub fn tensor(&self, name: &str, shape: [usize; 2], device: &Device) -> Result<Tensor<2>> {
        let found = self.file.shape(name).ok_or_else(|| Error::MissingTensor {
            file: self.file_name().to_string(),
            tensor: name.to_string(),
        })?;
        if found != shape {
            return Err(Error::ShapeMismatch {
                file: self.file_name().to_string(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        let t = self.file.load(name)?;
        if !t.is_finite() {
            return Err(Error::format(
                self.file_name(),
                format!("`{name}` holds NaN or infinite values"),
            ));
        }
        Ok(Tensor::<2>::from_data(TensorData::new(t.data, shape), device).inner())
    }

    /// Checks that the checkpoint belongs to this base model and these windows.
    pub fn check_matches(&self, base_model: &str, data: &Dataset) -> Result<()> {
        let name = self.file_name();
        if self.state.base_model != base_model {
            return Err(Error::Invalid(format!(
                "{name}: the checkpoint is of a run on `{}`, and the model loaded is `{base_model}`",
                self.state.base_model
            )));
        }
        if fingerprint(data) != self.state.data_fingerprint {
            return Err(Error::Invalid(format!(
                "{name}: the checkpoint was made with other text files (or another split): add \
                 the same files as in that run"
            )));
        }
        Ok(())
    }
}

/// The LoRA matrices and optimizer moments of `model` and `moments`, read back from the device.
pub async fn read_tensors(
    model: &CausalLM,
    moments: &std::collections::BTreeMap<String, crate::optim::Moments>,
) -> Result<RunTensors> {
    let mut tensors = Vec::new();
    for (path, _, proj) in model.projections() {
        if let Some(lora) = &proj.lora {
            let [a, b] = crate::optim::matrix_names(&path);
            tensors.push((a, read(lora.a.val()).await?));
            tensors.push((b, read(lora.b.val()).await?));
        }
    }
    for (name, m) in moments {
        tensors.push((format!("{name}.exp_avg"), read(m.exp_avg.clone()).await?));
        tensors.push((
            format!("{name}.exp_avg_sq"),
            read(m.exp_avg_sq.clone()).await?,
        ));
    }
    Ok(RunTensors { tensors })
}

async fn read(t: Tensor<2>) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::Device(format!("reading the checkpoint back failed: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading the checkpoint back failed: {e:?}")))?;
    Ok(HostTensor::new(shape, data))
}

/// The run state of either format: 2 as it is; 1 (its `config` the training settings of the
/// time, with `lora` inside and `recompute` / `base_f16` / `log_every` beside the schedule,
/// `seq_len` and `val_fraction` beside it) moved into a [`RunSpec`] field by field.
fn parse_state(json: &str) -> std::result::Result<RunState, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_str(json)?;
    if value.get("format").and_then(|f| f.as_u64()) == Some(1)
        && let Some(state) = value.as_object_mut()
    {
        let mut config = state.remove("config").unwrap_or_default();
        let mut take = |key: &str| {
            config
                .as_object_mut()
                .and_then(|c| c.remove(key))
                .unwrap_or(serde_json::Value::Null)
        };
        let mut group = serde_json::Map::new();
        let mut spec = serde_json::Map::new();
        let put = |group: &mut serde_json::Map<String, serde_json::Value>,
                   key: &str,
                   v: serde_json::Value| {
            if !serde_json::Value::is_null(&v) {
                group.insert(key.to_string(), v);
            }
        };
        spec.insert("lora".into(), take("lora"));
        for key in [
            "steps",
            "batch_size",
            "grad_accum",
            "eval_every",
            "eval_windows",
        ] {
            put(&mut group, key, take(key));
        }
        for key in ["checkpoint_every", "seed"] {
            put(&mut group, key, take(key));
        }
        spec.insert("train".into(), group.clone().into());
        group.clear();
        for key in [
            "lr",
            "min_lr_ratio",
            "weight_decay",
            "adam_beta1",
            "adam_beta2",
        ] {
            put(&mut group, key, take(key));
        }
        put(&mut group, "adam_epsilon", take("adam_epsilon"));
        // Present as null when there was none: kept so, not defaulted.
        group.insert("warmup_steps".into(), take("warmup_steps"));
        group.insert("max_grad_norm".into(), take("max_grad_norm"));
        spec.insert("optim".into(), group.clone().into());
        group.clear();
        for key in ["recompute", "base_f16"] {
            put(&mut group, key, take(key));
        }
        group.insert("log_every".into(), take("log_every"));
        spec.insert("exec".into(), group.into());
        let mut data = serde_json::Map::new();
        for key in ["seq_len", "val_fraction"] {
            if let Some(v) = state.remove(key) {
                data.insert(key.into(), v);
            }
        }
        spec.insert("data".into(), data.into());
        state.insert("spec".into(), spec.into());
        state.insert("format".into(), FORMAT.into());
    }
    serde_json::from_value(value)
}
