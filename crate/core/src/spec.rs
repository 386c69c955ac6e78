//! The run specification: every setting of a training run in one serde type, [`RunSpec`].
//!
//! The command line (its flags, or `--config FILE.json`), the page and the JS API
//! (`WebSession.start(spec)`) and the checkpoint all read and write it whole, and
//! [`RunSpec::validate`] checks it in one place against [`crate::limits`], which the page reads
//! for its form ([`crate::limits::setting_limits`]). Unknown keys are an error that names the
//! key ([`RunSpec::from_json`]): a misspelled setting never trains with the default.
//!
//! In JSON, every field may be left out (it takes its default):
//!
//! ```json
//! { "data":  { "seq_len": 128, "val_fraction": 0.1, "train_on": "assistant" },
//!   "lora":  { "r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "v_proj"] },
//!   "train": { "steps": 100, "batch_size": 4, "grad_accum": 1, "eval_every": 25, "seed": 0 },
//!   "optim": { "lr": 0.0005, "warmup_steps": null, "weight_decay": 0.01, "max_grad_norm": 1.0 },
//!   "exec":  { "base_f16": false, "products": null, "recompute": false, "log_every": null } }
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::FrozenProducts;
use crate::limits::*;
use crate::lora::LoraConfig;

/// Every setting of a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// How the texts become training and validation windows.
    pub data: DataSpec,
    /// Which projections get LoRA, and how (PEFT's `LoraConfig`).
    pub lora: LoraConfig,
    /// Steps, batches, evaluation and checkpoint cadence, the seed.
    pub train: TrainSpec,
    /// AdamW and its learning-rate schedule.
    pub optim: OptimSpec,
    /// How the run computes: memory and speed, not what it learns (within the tolerances the
    /// golden tests state for a base kept in f16).
    pub exec: ExecSpec,
}

/// How the texts become windows ([`crate::data::Dataset::build`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// Tokens a training window feeds the model.
    pub seq_len: usize,
    /// Share held out for validation: of plain text whole files when there are several, else
    /// the end of the one file; of chat data, examples.
    pub val_fraction: f64,
    /// A file to hold out for validation instead (its name as added), whole: the others train.
    pub val_file: Option<String>,
    /// What chat data's loss learns: the assistant's turns, or every token.
    pub train_on: TrainOn,
    /// What a record of chat data that cannot be read does to the run.
    pub malformed: Malformed,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            seq_len: 128,
            val_fraction: 0.1,
            val_file: None,
            train_on: TrainOn::Assistant,
            malformed: Malformed::Skip,
        }
    }
}

/// What chat data's loss learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainOn {
    /// The assistant's turns (with what the template closes them with, so that the model
    /// learns to end its answers): the prompt is read, not learned (TRL's completion-only loss).
    #[default]
    Assistant,
    /// Every token of the rendered conversation, prompts included.
    All,
}

/// What a record of chat data that cannot be read does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Malformed {
    /// Left out; the file's other records train (each left out is reported with its line).
    #[default]
    Skip,
    /// The run refuses to start, naming the file and the line.
    Refuse,
}

/// The run's length, batches and cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one step.
    pub grad_accum: usize,
    /// Evaluate every this many steps (0: only at the start and the end).
    pub eval_every: usize,
    /// At most this many validation windows per evaluation, spread evenly (0: all).
    pub eval_windows: usize,
    /// A checkpoint is due every this many steps (0: only when pausing):
    /// [`crate::train::Trainer::next`] says so, the caller stores it.
    pub checkpoint_every: usize,
    /// LoRA's initialization, the split of several files, the batch order and dropout.
    pub seed: u64,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 4,
            grad_accum: 1,
            eval_every: 25,
            eval_windows: 16,
            checkpoint_every: 10,
            seed: 0,
        }
    }
}

/// AdamW on A and B, linear warmup then cosine decay, global-norm clipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSpec {
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warmup (None: 10% of the steps).
    pub warmup_steps: Option<usize>,
    /// The cosine decays to lr * min_lr_ratio.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm of all A and B to this (None: no clipping).
    pub max_grad_norm: Option<f64>,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
}

impl Default for OptimSpec {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            warmup_steps: None,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
        }
    }
}

/// How a run computes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecSpec {
    /// The frozen base kept in f16: half its memory. Loaded so (`BaseModel::from_path_with`,
    /// the page's "16-bit weights"); a [`crate::session::Session`] refuses a spec that says
    /// otherwise than its model was loaded, and [`crate::train::Trainer::new`] converts a model
    /// given in f32 (memory on top of the f32 base: its peak does not go down).
    pub base_f16: bool,
    /// How the CPU multiplies by the f16 base ([`FrozenProducts`]); None: the platform's (16-bit
    /// integers in wasm, widened to f32 natively).
    pub products: Option<FrozenProducts>,
    /// Activation recomputation ("Save memory"): keep only each decoder layer's input and run
    /// the layer again in the backward pass. The same gradients, for one more forward pass; a
    /// run may switch it ([`crate::train::Trainer::set_recompute`]).
    pub recompute: bool,
    /// Read the training loss (and the gradients' norm, checked finite) back every this many
    /// steps (0: only when evaluating, at checkpoints and at the end). None: every step on the
    /// CPU, where reading costs nothing, and every [`crate::defaults::GPU_LOG_EVERY`] steps on a
    /// GPU, where each read waits for its queue to drain.
    pub log_every: Option<usize>,
}

impl RunSpec {
    /// Parses a spec from JSON (a config file, or what the page sends), `name` naming it in
    /// errors; unknown keys are refused with their path (`train.stpes`). Not validated.
    pub fn from_json(name: &str, text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Error::Invalid(format!("{name}: {}", describe(&path, &inner.to_string())))
        })
    }

    /// The spec as JSON, whole (every field, defaults included): what a config file and a
    /// checkpoint hold.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a RunSpec always serializes")
    }

    /// Checks every setting against [`crate::limits`]: a setting typed by hand gets a message
    /// naming it (its JSON path), not an allocation failure mid-run.
    pub fn validate(&self) -> Result<()> {
        self.lora.validate()?;
        let (d, t, o) = (&self.data, &self.train, &self.optim);
        range("data.seq_len", d.seq_len, MIN_SEQ_LEN, MAX_SEQ_LEN)?;
        real(
            "data.val_fraction",
            d.val_fraction,
            (0.0..1.0).contains(&d.val_fraction),
            "in [0, 1)",
        )?;
        range("train.steps", t.steps, 1, MAX_STEPS)?;
        range("train.batch_size", t.batch_size, 1, MAX_BATCH_SIZE)?;
        range("train.grad_accum", t.grad_accum, 1, MAX_GRAD_ACCUM)?;
        range("train.eval_every", t.eval_every, 0, MAX_STEPS)?;
        range("train.eval_windows", t.eval_windows, 0, MAX_EVAL_WINDOWS)?;
        range("train.checkpoint_every", t.checkpoint_every, 0, MAX_STEPS)?;
        range("optim.warmup_steps", self.warmup(), 0, t.steps)?;
        if let Some(every) = self.exec.log_every {
            range("exec.log_every", every, 0, MAX_STEPS)?;
        }
        let tokens = t.batch_size.saturating_mul(d.seq_len);
        if tokens > MAX_BATCH_TOKENS {
            return Err(Error::Invalid(format!(
                "train.batch_size x data.seq_len is {tokens} tokens; at most {MAX_BATCH_TOKENS} \
                 fit in one micro-batch (use train.grad_accum for larger batches)"
            )));
        }
        real(
            "optim.lr",
            o.lr,
            o.lr > 0.0 && o.lr <= MAX_LEARNING_RATE,
            &format!("above 0 and at most {MAX_LEARNING_RATE}"),
        )?;
        let unit = |v: f64, open: bool| v >= 0.0 && if open { v < 1.0 } else { v <= 1.0 };
        let ratio = o.min_lr_ratio;
        real("optim.min_lr_ratio", ratio, unit(ratio, false), "in [0, 1]")?;
        let decay = o.weight_decay;
        real("optim.weight_decay", decay, unit(decay, false), "in [0, 1]")?;
        let b1 = o.adam_beta1;
        real("optim.adam_beta1", b1, unit(b1, true), "in [0, 1)")?;
        let b2 = o.adam_beta2;
        real("optim.adam_beta2", b2, unit(b2, true), "in [0, 1)")?;
        let eps = o.adam_epsilon;
        real("optim.adam_epsilon", eps, eps > 0.0, "positive")?;
        if let Some(n) = o.max_grad_norm {
            real("optim.max_grad_norm", n, n > 0.0, "positive")?;
        }
        Ok(())
    }

    /// Steps of linear warmup.
    pub fn warmup(&self) -> usize {
        self.optim.warmup_steps.unwrap_or(self.train.steps / 10)
    }

    /// Learning rate for optimizer step `step` (0-based): linear warmup, then cosine decay to
    /// `lr * min_lr_ratio` at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        let (lr, warmup) = (self.optim.lr, self.warmup());
        if step < warmup {
            return lr * (step + 1) as f64 / warmup as f64;
        }
        let span = self.train.steps.saturating_sub(warmup).max(1);
        let progress = ((step - warmup) as f64 / span as f64).min(1.0);
        let min = lr * self.optim.min_lr_ratio;
        min + (lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Training tokens an optimizer step reads.
    pub fn tokens_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum * self.data.seq_len
    }

    /// How the run's f16 products are computed.
    pub fn products(&self) -> FrozenProducts {
        self.exec.products.unwrap_or_else(FrozenProducts::platform)
    }
}

/// An error of serde's at `path`, in words: serde says "unknown field `stpes`, expected one of
/// ..."; the path says where.
fn describe(path: &str, message: &str) -> String {
    if path.is_empty() || path == "." {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

fn range(name: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name} is {v}; it must be between {lo} and {hi}"
        )))
    }
}

fn real(name: &str, v: f64, ok: bool, want: &str) -> Result<()> {
    if v.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{name} is {v}; it must be {want}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_object_is_the_defaults_and_the_json_round_trips() {
        let spec = RunSpec::from_json("spec", "{}").unwrap();
        assert_eq!(spec, RunSpec::default());
        spec.validate().unwrap();
        let again = RunSpec::from_json("spec", &spec.to_json()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let e = RunSpec::from_json("run.json", r#"{"train": {"stpes": 5}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("run.json") && e.contains("train") && e.contains("stpes"),
            "{e}"
        );
        let e = RunSpec::from_json("s", r#"{"lora": {"rank": 4}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora") && e.contains("rank"), "{e}");
        let e = RunSpec::from_json("s", r#"{"seq_len": 64}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("seq_len"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_setting() {
        let e = RunSpec::from_json("s", r#"{"optim": {"lr": "fast"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr"), "{e}");
    }

    #[test]
    fn settings_out_of_range_name_their_path() {
        let mut spec = RunSpec::default();
        spec.data.val_fraction = f64::NAN;
        let e = spec.validate().unwrap_err().to_string();
        assert!(e.contains("data.val_fraction"), "{e}");
        let mut spec = RunSpec::default();
        spec.data.val_fraction = -1.0;
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("val_fraction")
        );
        let mut spec = RunSpec::default();
        spec.train.batch_size = 1 << 30;
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("train.batch_size")
        );
        let mut spec = RunSpec::default();
        spec.optim.lr = 0.0;
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("optim.lr")
        );
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_its_floor() {
        let mut spec = RunSpec::default();
        spec.train.steps = 100;
        assert_eq!(spec.warmup(), 10);
        assert!((spec.lr_at(0) - 5e-5).abs() < 1e-12);
        assert!((spec.lr_at(9) - 5e-4).abs() < 1e-12);
        assert!((spec.lr_at(100) - 5e-5).abs() < 1e-12);
        assert!(spec.lr_at(50) < spec.lr_at(20));
    }
}
