//! The training loop: AdamW on the LoRA matrices only, linear warmup then cosine decay,
//! global-norm gradient clipping, gradient accumulation, periodic validation, progress events.
//!
//! Backend-generic and browser-safe: values are read back with `async` reads, and only the loss
//! (a scalar) when it is reported. One [`Trainer::step`] is one optimizer step; pausing, resuming
//! and stopping happen between steps.

use burn::module::{Module, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::checkpoint::{self, CheckpointFile, RunState};
use crate::data::{BatchOrder, Dataset};
use crate::error::{Error, Result};
use crate::lora::LoraBranch;
use crate::lora::LoraConfig;
use crate::model::CausalLM;
use crate::optim::AdamW;

/// Everything that shapes a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one step.
    pub grad_accum: usize,
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
    /// Evaluate every this many steps (0: only at the start and the end).
    pub eval_every: usize,
    /// At most this many validation windows per evaluation (0: all).
    pub eval_windows: usize,
    /// Read the training loss (with the gradients' norm, checked finite) back every this many
    /// steps (0: only when evaluating, at checkpoints and at the end). None: by the device,
    /// every step on the CPU, where reading costs nothing, and every
    /// [`crate::defaults::GPU_LOG_EVERY`] steps on a GPU, where each read waits for the queue to
    /// drain. A non-finite step found late still ends the run with the adapter from the last
    /// step read back finite.
    pub log_every: Option<usize>,
    /// A checkpoint is due every this many steps (0: only when pausing): [`Trainer::next`] says
    /// so, the caller stores it (a file, the browser's storage).
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Activation recomputation (gradient checkpointing): keep only each decoder layer's input
    /// and run the layer again in the backward pass. Less memory (one layer's activations
    /// instead of all of them), for one more forward pass of the layers.
    pub recompute: bool,
    /// The frozen base kept in f16 ([`CausalLM::with_base_in_f16`]; the CPU backend): half the
    /// base's memory; every product still runs in f32, from the weights rounded to f16. Load
    /// the model so (`BaseModel::from_path_with` and the like): converted later, the f32 model
    /// has been whole in memory and the peak does not go down. The trainer converts a model
    /// given in f32 (the run then computes what was asked, for memory on top of the f32 base).
    pub base_f16: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            steps: 100,
            batch_size: 4,
            grad_accum: 1,
            lr: 5e-4,
            warmup_steps: None,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            eval_every: 25,
            eval_windows: 16,
            log_every: None,
            checkpoint_every: crate::defaults::CHECKPOINT_EVERY,
            seed: 0,
            recompute: false,
            base_f16: false,
        }
    }
}

impl TrainConfig {
    /// Checks every setting against [`crate::limits`] with windows of `seq_len` tokens: a
    /// setting typed by hand gets a message naming it, not an allocation failure mid-run.
    pub fn validate(&self, seq_len: usize) -> Result<()> {
        use crate::limits::*;
        self.lora.validate()?;
        let range = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{name} is {v}; it must be between {lo} and {hi}"
                )))
            }
        };
        range("the number of steps", self.steps, 1, MAX_STEPS)?;
        range("the batch size", self.batch_size, 1, MAX_BATCH_SIZE)?;
        range("gradient accumulation", self.grad_accum, 1, MAX_GRAD_ACCUM)?;
        range("the sequence length", seq_len, 2, MAX_SEQ_LEN)?;
        range("the warmup", self.warmup(), 0, self.steps)?;
        range("the evaluation period", self.eval_every, 0, MAX_STEPS)?;
        range(
            "the evaluation windows",
            self.eval_windows,
            0,
            MAX_EVAL_WINDOWS,
        )?;
        if let Some(every) = self.log_every {
            range("the logging period", every, 0, MAX_STEPS)?;
        }
        let tokens = self.batch_size.saturating_mul(seq_len);
        if tokens > MAX_BATCH_TOKENS {
            return Err(Error::Invalid(format!(
                "batch size x sequence length is {tokens} tokens; at most {MAX_BATCH_TOKENS} fit \
                 in one micro-batch (use gradient accumulation for larger batches)"
            )));
        }
        let real = |name: &str, v: f64, ok: bool, want: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::Invalid(format!("{name} is {v}; it must be {want}")))
            }
        };
        real(
            "the learning rate",
            self.lr,
            self.lr > 0.0 && self.lr <= MAX_LEARNING_RATE,
            &format!("above 0 and at most {MAX_LEARNING_RATE}"),
        )?;
        let unit = |v: f64, open: bool| v >= 0.0 && if open { v < 1.0 } else { v <= 1.0 };
        real(
            "min_lr_ratio",
            self.min_lr_ratio,
            unit(self.min_lr_ratio, false),
            "in [0, 1]",
        )?;
        real(
            "the weight decay",
            self.weight_decay,
            unit(self.weight_decay, false),
            "in [0, 1]",
        )?;
        real(
            "adam_beta1",
            self.adam_beta1,
            unit(self.adam_beta1, true),
            "in [0, 1)",
        )?;
        real(
            "adam_beta2",
            self.adam_beta2,
            unit(self.adam_beta2, true),
            "in [0, 1)",
        )?;
        real(
            "adam_epsilon",
            self.adam_epsilon,
            self.adam_epsilon > 0.0,
            "positive",
        )?;
        if let Some(n) = self.max_grad_norm {
            real("max_grad_norm", n, n > 0.0, "positive")?;
        }
        Ok(())
    }

    pub fn warmup(&self) -> usize {
        self.warmup_steps.unwrap_or(self.steps / 10)
    }

    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let warmup = self.warmup();
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let span = self.steps.saturating_sub(warmup).max(1);
        let progress = ((step - warmup) as f64 / span as f64).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// A progress report, sent after every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub tokens_seen: usize,
    /// Mean training loss of this step (when read back this step).
    pub train_loss: Option<f32>,
    /// Validation loss (when evaluated this step).
    pub val_loss: Option<f32>,
    pub val_perplexity: Option<f32>,
    pub lr: f64,
    /// Seconds this optimizer step took (forward, backward, optimizer; no evaluation).
    pub step_secs: f64,
    /// Seconds this step's evaluation took, when it evaluated.
    pub eval_secs: Option<f64>,
    /// Training tokens per second of training time (evaluation excluded).
    pub tokens_per_sec: f64,
    /// Seconds spent training and evaluating so far (pauses excluded).
    pub elapsed_secs: f64,
    /// Remaining seconds: the remaining steps at the measured step time, plus the evaluations
    /// still due at the measured evaluation time.
    pub eta_secs: f64,
    /// The next step after which the model is evaluated (None: no more evaluations).
    pub next_eval_step: Option<usize>,
    /// Where the run stands after this call of [`Trainer::next`].
    #[serde(default)]
    pub status: RunStatus,
    /// Store a checkpoint now ([`Trainer::checkpoint`]): every `checkpoint_every` steps, and on
    /// pausing.
    #[serde(default)]
    pub checkpoint_due: bool,
}

/// Where a run stands: what [`Trainer::next`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// It took this step; call `next` again.
    #[default]
    Running,
    /// A pause was asked for: no step was taken; `next` continues.
    Paused,
    /// All steps are done (this call took the last one).
    Finished,
    /// Stopped early (asked to, or after a non-finite step): no more steps.
    Stopped,
}

/// What the progress callback of [`Trainer::run`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Return from `run`; calling it again resumes where it left off.
    Pause,
    /// Return from `run` and finish the run (no more steps).
    Stop,
}

/// Why [`Trainer::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Finished,
    Paused,
    Stopped,
}

/// Mean next-token cross-entropy.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`, targets: `[batch, seq]` -> `[1]`
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    crate::kernels::cross_entropy(logits.reshape([b * t, v]), targets.reshape([b * t]))
}

/// Input and target ids of some windows.
///
/// # Shapes
/// - returns `([n, seq_len], [n, seq_len])`
pub fn batch_tensors(windows: &[&[u32]], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let n = windows.len();
    let t = windows.first().map_or(0, |w| w.len() - 1);
    let mut inputs = Vec::with_capacity(n * t);
    let mut targets = Vec::with_capacity(n * t);
    for w in windows {
        inputs.extend(w[..t].iter().map(|&x| i64::from(x)));
        targets.extend(w[1..].iter().map(|&x| i64::from(x)));
    }
    (
        Tensor::<2, Int>::from_data(TensorData::new(inputs, [n, t]), device),
        Tensor::<2, Int>::from_data(TensorData::new(targets, [n, t]), device),
    )
}

/// The windows an evaluation reads: all of them, or `max_windows` spread evenly over the
/// validation text (the same ones every time, so evaluations compare), so that evaluation stays a
/// small, fixed share of a run whatever the amount of held-out text.
pub fn eval_sample(windows: &[Vec<u32>], max_windows: usize) -> Vec<&[u32]> {
    let n = if max_windows == 0 {
        windows.len()
    } else {
        windows.len().min(max_windows)
    };
    (0..n)
        .map(|i| windows[i * windows.len() / n].as_slice())
        .collect()
}

/// Mean validation loss over (an even sample of at most `max_windows` of) `windows`, without
/// gradients.
pub async fn evaluate(
    model: &CausalLM,
    windows: &[Vec<u32>],
    batch_size: usize,
    max_windows: usize,
) -> Result<Option<f32>> {
    let block_rows = crate::kernels::LOSS_BLOCK_ROWS;
    evaluate_in_blocks(model, windows, batch_size, max_windows, block_rows, true).await
}

/// [`evaluate`], the LM head's logits `block_rows` rows at a time ([`CausalLM::loss_in_blocks`]);
/// `parallel`: on the CPU, two chunks of windows at once where there are threads (twice the
/// memory of one).
async fn evaluate_in_blocks(
    model: &CausalLM,
    windows: &[Vec<u32>],
    batch_size: usize,
    max_windows: usize,
    block_rows: usize,
    parallel: bool,
) -> Result<Option<f32>> {
    let sample = eval_sample(windows, max_windows);
    let n = sample.len();
    if n == 0 {
        return Ok(None);
    }
    // A window feeds all its tokens but the last: refuse more than the model reads.
    if let Some(longest) = sample.iter().map(|w| w.len().saturating_sub(1)).max() {
        model.check_length(longest)?;
    }
    let model = model.valid();
    let device = model.device();
    // Weight each chunk by its size so the result is the mean over all windows.
    let chunk_loss = |chunk: &[&[u32]]| {
        let (inputs, targets) = batch_tensors(chunk, &device);
        model
            .loss_in_blocks(inputs, targets, block_rows)
            .mul_scalar(chunk.len() as f64)
    };
    let chunks: Vec<&[&[u32]]> = sample.chunks(batch_size.max(1)).collect();
    // On the CPU, two chunks at a time on the threads (as a training step's shards: `shards`);
    // summed in order either way.
    let in_pairs = parallel && crate::kernels::fused(&device) && crate::shards::parallel();
    let losses: Vec<Tensor<1>> = if in_pairs {
        chunks
            .chunks(2)
            .flat_map(|pair| match pair {
                [a, b] => {
                    let (a, b) = rayon::join(|| chunk_loss(a), || chunk_loss(b));
                    vec![a, b]
                }
                _ => pair.iter().map(|c| chunk_loss(c)).collect(),
            })
            .collect()
    } else {
        chunks.iter().map(|c| chunk_loss(c)).collect()
    };
    let total = losses
        .into_iter()
        .reduce(|t, loss| t + loss)
        .expect("n > 0 gives a chunk");
    let sum = read_scalar(total).await?;
    Ok(Some(sum / n as f32))
}

async fn read_scalar(t: Tensor<1>) -> Result<f32> {
    t.into_scalar_async::<f32>()
        .await
        .map_err(|e| Error::Device(format!("reading a value back failed: {e:?}")))
}

async fn read_values(t: Tensor<1>) -> Result<Vec<f32>> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::Device(format!("reading values back failed: {e:?}")))?;
    data.try_to_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading values back failed: {e:?}")))
}

/// How [`crate::session::Session::measure`] times the step that a run's estimate divides by:
/// `cfg` for the probe run on `device`, and how many of its steps to take before the one timed.
///
/// - On the CPU: the first step of a window per shard (one, or `shards::SHARDS` where
///   there are threads to run them at once). A step's time grows with its tokens, so a small
///   batch keeps the wait short, and the first step costs about what the others do (a little
///   more: memory is allocated), so the estimate errs long. One window on two threads left one
///   of them mostly idle: the page's estimate of its default run on this 2-core machine was
///   1.9x its time.
/// - On a GPU: the run's own batch, after three steps. The first steps compile kernels (on an
///   H200: 10.7 s, 2.0 s, 0.38 s, then 0.245 s a step; README, "On a GPU"), and a step's time
///   hardly grows with its batch there (0.202 s for one window, 0.244 s for four), so a first
///   step of one window made the estimate ~150x too long. Each step reads its loss back:
///   otherwise a step is timed when its work is queued, not done.
///
/// The timed step is never the probe's last (which would also evaluate), nor one that evaluates.
pub fn speed_probe(cfg: &TrainConfig, device: &Device) -> (TrainConfig, usize) {
    let (batch_size, warmup) = if !crate::device::is_cpu(device) {
        (cfg.batch_size, 3)
    } else if crate::shards::parallel() {
        (cfg.batch_size.min(crate::shards::SHARDS), 0)
    } else {
        (1, 0)
    };
    let probe = TrainConfig {
        steps: warmup + 2,
        batch_size,
        grad_accum: 1,
        eval_every: 0,
        log_every: Some(1),
        // On the base as it is: an f16 copy beside it would be memory for nothing.
        base_f16: false,
        ..cfg.clone()
    };
    (probe, warmup)
}

/// Seconds a run of `cfg` should take at `tokens_per_sec` of training: its steps, plus its
/// evaluations (a forward pass costs about a third of a training step on as many tokens).
pub fn estimate_secs(
    cfg: &TrainConfig,
    seq_len: usize,
    val_windows: usize,
    tokens_per_sec: f64,
) -> f64 {
    let step_tokens = (cfg.batch_size * cfg.grad_accum * seq_len) as f64;
    let evals = (1..=cfg.steps)
        .filter(|&s| s == cfg.steps || (cfg.eval_every > 0 && s.is_multiple_of(cfg.eval_every)))
        .count();
    let eval_windows = if cfg.eval_windows == 0 {
        val_windows
    } else {
        val_windows.min(cfg.eval_windows)
    };
    let eval_tokens = (eval_windows * seq_len) as f64 / 3.0;
    (cfg.steps as f64 * step_tokens + evals as f64 * eval_tokens) / tokens_per_sec.max(1e-9)
}

/// The dropout seed of step `step` (0-based) of a run seeded with `seed`.
fn step_seed(seed: u64, step: usize) -> u64 {
    crate::rng::Rng::new(seed ^ (step as u64).wrapping_mul(crate::rng::GOLDEN_GAMMA)).next_u64()
}

/// Steps the ETA averages over, at least: [`Trainer::recent_window`].
const RECENT_STEPS: usize = 5;

/// One run of LoRA training over a dataset.
pub struct Trainer {
    /// `None` only transiently while the optimizer consumes it.
    model: Option<CausalLM>,
    optim: AdamW,
    cfg: TrainConfig,
    data: Dataset,
    order: BatchOrder,
    device: Device,
    lora_ids: Vec<ParamId>,
    step: usize,
    tokens_seen: usize,
    /// Seconds spent in optimizer steps so far (evaluation and pauses excluded).
    train_secs: f64,
    /// Seconds spent evaluating so far, and how many evaluations that was.
    eval_secs: f64,
    evals: usize,
    /// Times of the last few steps, for the ETA.
    recent_steps: Vec<f64>,
    stopped: bool,
    /// A pause was asked for: the next call of `next` takes no step.
    pause_requested: bool,
    /// The model before the last step, to go back to when evaluation after it is not finite.
    previous: Option<CausalLM>,
    /// The model after the last step whose loss and gradients were read back finite (or as the
    /// run started or resumed), and that step: what a non-finite step found later goes back to.
    last_good: (usize, CausalLM),
    /// Why the run stopped, when a step was not finite.
    failure: Option<String>,
    pub history: Vec<Progress>,
}

impl Trainer {
    /// `model` must live on an autodiff device and have LoRA attached (see [`crate::lora::attach`]).
    pub fn new(model: CausalLM, data: Dataset, cfg: TrainConfig) -> Result<Self> {
        let device = model.device();
        if !device.is_autodiff() {
            return Err(Error::Invalid(
                "training needs an autodiff device (device.autodiff())".into(),
            ));
        }
        cfg.validate(data.seq_len)?;
        model.check_length(data.seq_len)?;
        let model = if cfg.base_f16 {
            model.with_base_in_f16().0
        } else {
            model
        };
        let lora_ids: Vec<ParamId> = model
            .projections()
            .into_iter()
            .filter_map(|(_, _, p)| p.lora.as_ref().map(|l| [l.a.id, l.b.id]))
            .flatten()
            .collect();
        if lora_ids.is_empty() {
            return Err(Error::Invalid(
                "the model has no LoRA layers to train".into(),
            ));
        }
        let optim = AdamW::new(
            cfg.adam_beta1,
            cfg.adam_beta2,
            cfg.adam_epsilon,
            cfg.weight_decay,
        );
        let order = BatchOrder::new(data.train.len(), cfg.batch_size, cfg.seed);
        Ok(Self {
            last_good: (0, model.clone()),
            model: Some(model),
            optim,
            cfg,
            data,
            order,
            device,
            lora_ids,
            step: 0,
            tokens_seen: 0,
            train_secs: 0.0,
            eval_secs: 0.0,
            evals: 0,
            recent_steps: Vec::new(),
            stopped: false,
            pause_requested: false,
            previous: None,
            failure: None,
            history: Vec::new(),
        })
    }

    pub fn model(&self) -> &CausalLM {
        self.model.as_ref().expect("model is present between steps")
    }

    pub fn into_model(self) -> CausalLM {
        self.model.expect("model is present between steps")
    }

    /// Turns activation recomputation on or off for the steps to come ([`TrainConfig::recompute`]):
    /// the gradients are the same either way, only memory and time change, so a run may switch
    /// (the page's "Save memory" when it resumes a run that ran out of memory).
    pub fn set_recompute(&mut self, on: bool) {
        self.cfg.recompute = on;
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn is_finished(&self) -> bool {
        self.stopped || self.step >= self.cfg.steps
    }

    /// The run as a checkpoint file ([`crate::checkpoint`]): `base_model` names the model it
    /// runs on, `val_fraction` is the split it was made with.
    pub async fn checkpoint(&self, base_model: &str, val_fraction: f64) -> Result<Vec<u8>> {
        let state = RunState {
            format: 1,
            base_model: base_model.to_string(),
            config: self.cfg.clone(),
            seq_len: self.data.seq_len,
            val_fraction,
            data_fingerprint: checkpoint::fingerprint(&self.data),
            step: self.step,
            tokens_seen: self.tokens_seen,
            train_secs: self.train_secs,
            eval_secs: self.eval_secs,
            evals: self.evals,
            order: self.order.clone(),
            optimizer_steps: self.optim.steps,
            history: self.history.clone(),
        };
        let tensors = checkpoint::read_tensors(self.model(), &self.optim.moments).await?;
        checkpoint::to_bytes(&state, &tensors)
    }

    /// Continues the run saved in `file`: `model` is the base model (on an autodiff device; any
    /// LoRA it has is replaced), `data` the same windows the run had, `base_model` its name.
    pub fn resume(
        mut model: CausalLM,
        data: Dataset,
        file: &CheckpointFile,
        base_model: &str,
    ) -> Result<Self> {
        file.check_matches(base_model, &data)?;
        let st = &file.state;
        let cfg = st.config.clone();
        // A base in f32 can be rounded to the run's f16 (Trainer::new does), not the reverse.
        if model.base_in_f16() && !cfg.base_f16 {
            return Err(Error::Invalid(format!(
                "{}: this run trained on the base's f32 weights, and the model is loaded with \
                 its weights in f16: load it in f32 (without base_f16) to resume the run",
                file.file_name()
            )));
        }
        let targets = cfg.lora.resolve_targets(&model)?;
        let device = model.device();
        let r = cfg.lora.r;
        for (path, name, proj) in model.projections_mut() {
            if !targets.contains(&name) {
                proj.lora = None;
                continue;
            }
            let [d_in, d_out] = proj.dims();
            let [name_a, name_b] = crate::optim::matrix_names(&path);
            // On the model's autodiff device, with its gradient-checkpointing strategy.
            let on_device = |t| match device.gradient_checkpointing_strategy() {
                Some(s) => Tensor::from_inner(t).with_gradient_checkpointing_strategy(s),
                None => Tensor::from_inner(t),
            };
            let a = on_device(file.tensor(&name_a, [d_in, r], &device)?);
            let b = on_device(file.tensor(&name_b, [r, d_out], &device)?);
            proj.lora = Some(LoraBranch::from_tensors(a, b, &cfg.lora));
        }
        let mut moments = std::collections::BTreeMap::new();
        for (path, _, proj) in model.projections() {
            let Some(lora) = &proj.lora else { continue };
            let [name_a, name_b] = crate::optim::matrix_names(&path);
            for (name, dims) in [(name_a, lora.a.dims()), (name_b, lora.b.dims())] {
                // A checkpoint of step 0 has no moments yet.
                if file.state.optimizer_steps == 0 {
                    continue;
                }
                moments.insert(
                    name.clone(),
                    crate::optim::Moments {
                        exp_avg: file.tensor(&format!("{name}.exp_avg"), dims, &device)?,
                        exp_avg_sq: file.tensor(&format!("{name}.exp_avg_sq"), dims, &device)?,
                    },
                );
            }
        }
        let train_windows = data.train.len();
        let mut t = Trainer::new(model, data, cfg)?;
        if !st.order.fits(train_windows, t.cfg.batch_size) {
            return Err(Error::format(
                file.file_name(),
                "the checkpoint's batch order does not fit its texts",
            ));
        }
        t.optim.steps = st.optimizer_steps;
        t.optim.moments = moments;
        t.order = st.order.clone();
        t.step = st.step;
        t.last_good = (st.step, t.model().clone());
        t.tokens_seen = st.tokens_seen;
        t.train_secs = st.train_secs;
        t.eval_secs = st.eval_secs;
        t.evals = st.evals;
        t.history = st.history.clone();
        t.recent_steps = st
            .history
            .iter()
            .rev()
            .take(t.recent_window())
            .map(|p| p.step_secs)
            .collect();
        Ok(t)
    }

    /// Ends the run early; the model keeps what it learned so far.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Validation windows one evaluation reads.
    pub fn eval_sample_size(&self) -> usize {
        eval_sample(&self.data.val, self.cfg.eval_windows).len()
    }

    /// Validation loss of the current model.
    pub async fn evaluate(&self) -> Result<Option<f32>> {
        // A run that saves memory keeps evaluation's peak down too.
        let block_rows = if self.cfg.recompute {
            crate::kernels::LOSS_BLOCK_ROWS_LOW_MEMORY
        } else {
            crate::kernels::LOSS_BLOCK_ROWS
        };
        evaluate_in_blocks(
            self.model(),
            &self.data.val,
            self.cfg.batch_size,
            self.cfg.eval_windows,
            block_rows,
            !self.cfg.recompute,
        )
        .await
    }

    /// One optimizer step (with `grad_accum` micro-batches), then validation if it is due.
    pub async fn step(&mut self) -> Result<Progress> {
        if self.is_finished() {
            return Err(Error::Invalid("the run is finished".into()));
        }
        let started = Instant::now();
        let lr = self.cfg.lr_at(self.step);
        // Dropout draws from the device's generator (on the CPU, from streams seeded from the
        // same seed: `shards`): seeded from the run's seed and the step, so that a run resumed
        // from a checkpoint draws the same masks as one never interrupted. The generator is
        // shared by the process: reproducibility holds for one run at a time.
        let seed = step_seed(self.cfg.seed, self.step);
        self.device.seed(seed);
        let model = self.model.take().expect("model is present between steps");
        let mut accumulator = GradientsAccumulator::<CausalLM>::new();
        let mut loss_sum: Option<Tensor<1>> = None;
        let scale = 1.0 / self.cfg.grad_accum as f64;
        for micro in 0..self.cfg.grad_accum {
            let idx = self.order.next_batch();
            let refs: Vec<&[u32]> = idx.iter().map(|&i| self.data.train[i].as_slice()).collect();
            let (loss, grads) = if self.cfg.recompute {
                let (inputs, targets) = batch_tensors(&refs, &self.device);
                let seed = seed.wrapping_add(micro as u64);
                model.loss_recomputed(inputs, targets, scale, seed)
            } else if crate::kernels::fused(&self.device) {
                // The CPU: the batch in shards on the threads (`shards`), the same results
                // whatever their number.
                let seed = seed.wrapping_add(micro as u64);
                crate::shards::loss_and_grads(&model, &refs, &self.device, scale, seed)
            } else {
                let (inputs, targets) = batch_tensors(&refs, &self.device);
                let loss = model
                    .loss(inputs, targets)
                    .div_scalar(self.cfg.grad_accum as f64);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                (loss, grads)
            };
            accumulator.accumulate(&model, grads);
            let detached = loss.detach();
            loss_sum = Some(match loss_sum {
                None => detached,
                Some(s) => s + detached,
            });
            self.tokens_seen += refs.len() * self.data.seq_len;
        }
        let mut grads = accumulator.grads();
        let grad_sq = grad_sum_sq(&grads, &self.lora_ids);
        if let (Some(max_norm), Some(sum_sq)) = (self.cfg.max_grad_norm, &grad_sq) {
            clip_global_norm(&mut grads, &self.lora_ids, sum_sq.clone(), max_norm);
        }
        // Parameters are shared handles: keeping the model from before the step copies nothing
        // but lets a step whose evaluation turns out non-finite be undone.
        self.previous = Some(model.clone());
        let mut model = model;
        self.optim.step(lr, &mut model, &mut grads);
        self.model = Some(model);
        self.step += 1;

        // Read back when the period says so, and wherever the model is about to be kept or
        // judged (an evaluation, a checkpoint, the end): those always follow a checked step.
        let every = self.log_every();
        let log_now = every > 0 && self.step.is_multiple_of(every)
            || self.is_finished()
            || self.eval_due(self.step)
            || self.checkpoint_due();
        let train_loss = match (log_now, loss_sum) {
            (true, Some(loss)) => {
                // One readback for the loss and the gradients' squared norm: NaN or infinity in
                // either stops the run here, before a broken adapter can be kept.
                let values = match grad_sq {
                    Some(sq) => Tensor::cat(vec![loss, sq], 0),
                    None => loss,
                };
                let values = read_values(values).await?;
                let loss = values[0];
                let grads_finite = values.get(1).is_none_or(|g| g.is_finite());
                if !loss.is_finite() || !grads_finite {
                    let what = if loss.is_finite() {
                        "the gradients hold NaN or infinite values".to_string()
                    } else {
                        format!("the training loss is {loss}")
                    };
                    return Err(self.fail(what, lr, false));
                }
                self.last_good = (self.step, self.model().clone());
                Some(loss)
            }
            _ => None,
        };
        // On a GPU the step is only known to be done once something is read back: steps that
        // read nothing are timed when they are queued, and the next read pays for them.
        let step_secs = started.elapsed().as_secs_f64();
        self.train_secs += step_secs;
        self.recent_steps.push(step_secs);
        if self.recent_steps.len() > self.recent_window() {
            self.recent_steps.remove(0);
        }

        let (val_loss, eval_secs) = if self.eval_due(self.step) {
            let started = Instant::now();
            let loss = self.evaluate().await?;
            if let Some(l) = loss.filter(|l| !l.is_finite()) {
                return Err(self.fail(format!("the validation loss is {l}"), lr, true));
            }
            let secs = started.elapsed().as_secs_f64();
            self.eval_secs += secs;
            self.evals += 1;
            (loss, Some(secs))
        } else {
            (None, None)
        };
        let progress = self.progress(train_loss, val_loss, lr, step_secs, eval_secs);
        self.history.push(progress.clone());
        Ok(progress)
    }

    /// Ends the run after a non-finite step and puts back the model from the last step read
    /// back finite (or, when evaluation found the fault, from before the step just taken, whose
    /// own loss and gradients were read back finite: an evaluation always follows a read). Its
    /// weights came from steps whose gradients were checked finite; the export checks them again.
    fn fail(&mut self, what: String, lr: f64, in_evaluation: bool) -> Error {
        let failed_step = self.step;
        let (good_step, model) = match self.previous.take().filter(|_| in_evaluation) {
            Some(model) => (failed_step - 1, model),
            None => self.last_good.clone(),
        };
        self.model = Some(model);
        self.stopped = true;
        let message = format!(
            "step {failed_step}: {what}, so the run stopped. The learning rate ({lr:e} at this \
             step) is the likely cause: try a smaller one. The adapter is kept as it was after \
             step {good_step}."
        );
        self.failure = Some(message.clone());
        Error::NonFinite(message)
    }

    /// Why the run stopped early, when a step was not finite.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The period of [`TrainConfig::log_every`] on this run's device.
    fn log_every(&self) -> usize {
        self.cfg
            .log_every
            .unwrap_or(if crate::device::is_cpu(&self.device) {
                1
            } else {
                crate::defaults::GPU_LOG_EVERY
            })
    }

    /// How many recent steps the ETA averages over: [`RECENT_STEPS`] rounded up to whole periods
    /// of reading back (a step that reads nothing is timed when its work is queued, and the step
    /// that reads pays for it: only whole periods add up).
    fn recent_window(&self) -> usize {
        let period = match self.log_every() {
            0 => self.cfg.checkpoint_every,
            every => every,
        };
        let period = period.clamp(1, 50);
        RECENT_STEPS.div_ceil(period) * period
    }

    /// Whether a checkpoint is due after the step just taken (unless the run is finished).
    fn checkpoint_due(&self) -> bool {
        let every = self.cfg.checkpoint_every;
        every > 0 && self.step.is_multiple_of(every)
    }

    /// Whether the model is evaluated after optimizer step `step` (1-based).
    fn eval_due(&self, step: usize) -> bool {
        step >= self.cfg.steps
            || (self.cfg.eval_every > 0 && step.is_multiple_of(self.cfg.eval_every))
    }

    fn progress(
        &self,
        train_loss: Option<f32>,
        val_loss: Option<f32>,
        lr: f64,
        step_secs: f64,
        eval_secs: Option<f64>,
    ) -> Progress {
        // The recent steps predict the next ones better than the mean since the start, which
        // includes the first, slower steps (allocation, kernel compilation on a GPU).
        let per_step = if self.recent_steps.is_empty() {
            0.0
        } else {
            self.recent_steps.iter().sum::<f64>() / self.recent_steps.len() as f64
        };
        let remaining = self.cfg.steps.saturating_sub(self.step);
        let evals_left = (self.step + 1..=self.cfg.steps)
            .filter(|&s| self.eval_due(s))
            .count();
        let per_eval = if self.evals > 0 {
            self.eval_secs / self.evals as f64
        } else {
            // Not measured yet: a forward pass over the sample costs about a third of a
            // training step (forward + backward) over as many windows.
            let windows = self.eval_sample_size() as f64;
            per_step * windows / (self.cfg.batch_size * self.cfg.grad_accum).max(1) as f64 / 3.0
        };
        Progress {
            step: self.step,
            total_steps: self.cfg.steps,
            epoch: self.order.epoch,
            tokens_seen: self.tokens_seen,
            train_loss,
            val_loss,
            val_perplexity: val_loss.map(f32::exp),
            lr,
            step_secs,
            eval_secs,
            tokens_per_sec: if self.train_secs > 0.0 {
                self.tokens_seen as f64 / self.train_secs
            } else {
                0.0
            },
            elapsed_secs: self.train_secs + self.eval_secs,
            eta_secs: per_step * remaining as f64 + per_eval * evals_left as f64,
            next_eval_step: (self.step + 1..=self.cfg.steps).find(|&s| self.eval_due(s)),
            status: RunStatus::Running,
            checkpoint_due: false,
        }
    }

    /// Sets how often a checkpoint is due (0: only on pausing), e.g. for a resumed run.
    pub fn set_checkpoint_every(&mut self, steps: usize) {
        self.cfg.checkpoint_every = steps;
    }

    /// Asks the run to pause: the next call of [`Self::next`] takes no step and reports
    /// `Paused` (with a checkpoint due); the call after that continues.
    pub fn pause(&mut self) {
        self.pause_requested = true;
    }

    /// The training loop, one call at a time: what the page's worker and the CLI call until the
    /// status is no longer `Running`. A requested pause or stop takes effect here, before the
    /// next step; otherwise one optimizer step ([`Self::step`], with its evaluation when due).
    /// The report says whether a checkpoint is due. A non-finite step is an error
    /// ([`Error::NonFinite`]) that stops the run with the adapter from before it.
    pub async fn next(&mut self) -> Result<Progress> {
        if self.is_finished() {
            let status = if self.stopped {
                RunStatus::Stopped
            } else {
                RunStatus::Finished
            };
            return Ok(self.report(status, false));
        }
        if std::mem::take(&mut self.pause_requested) {
            self.check_unread_steps().await?;
            return Ok(self.report(RunStatus::Paused, true));
        }
        let mut progress = self.step().await?;
        if self.is_finished() {
            progress.status = RunStatus::Finished;
        } else {
            progress.checkpoint_due = self.checkpoint_due();
        }
        if let Some(last) = self.history.last_mut() {
            *last = progress.clone();
        }
        Ok(progress)
    }

    /// Before a pause, whose checkpoint must not keep a broken adapter: on a GPU the steps since
    /// the last read back were not checked, so the adapter and its optimizer state are read back
    /// and checked here. A NaN or infinity in a step's loss or gradients reaches both through
    /// AdamW's update. Non-finite: the run fails as a step found late does ([`Self::fail`]).
    async fn check_unread_steps(&mut self) -> Result<()> {
        if self.last_good.0 == self.step {
            return Ok(());
        }
        let run = checkpoint::read_tensors(self.model(), &self.optim.moments).await?;
        let broken = run.tensors.iter().find(|(_, t)| !t.is_finite());
        if let Some((name, _)) = broken {
            let what = format!(
                "a step since step {} left NaN or infinite values in {name} (found at the pause)",
                self.last_good.0
            );
            return Err(self.fail(what, self.cfg.lr_at(self.step), false));
        }
        self.last_good = (self.step, self.model().clone());
        Ok(())
    }

    /// The latest progress, for a call of `next` that took no step.
    fn report(&self, status: RunStatus, checkpoint_due: bool) -> Progress {
        let last = self.history.last().cloned();
        Progress {
            status,
            checkpoint_due,
            ..last
                .unwrap_or_else(|| self.progress(None, None, self.cfg.lr_at(self.step), 0.0, None))
        }
    }

    /// Steps until finished, or until `on_progress` asks to pause or stop: [`Self::next`] in a
    /// loop, with the report of every step taken passed to `on_progress`.
    pub async fn run(
        &mut self,
        mut on_progress: impl FnMut(&Progress) -> Control,
    ) -> Result<RunEnd> {
        loop {
            let before = self.step;
            let progress = self.next().await?;
            if self.step > before {
                match on_progress(&progress) {
                    Control::Continue => {}
                    Control::Pause => self.pause(),
                    Control::Stop => self.stop(),
                }
            }
            match progress.status {
                RunStatus::Running => {}
                RunStatus::Paused => return Ok(RunEnd::Paused),
                RunStatus::Finished if !self.stopped => return Ok(RunEnd::Finished),
                RunStatus::Finished | RunStatus::Stopped => return Ok(RunEnd::Stopped),
            }
        }
    }

    /// [`Self::run`] for native callers.
    pub fn run_blocking(
        &mut self,
        on_progress: impl FnMut(&Progress) -> Control,
    ) -> Result<RunEnd> {
        pollster::block_on(self.run(on_progress))
    }
}

/// The sum of squares of the gradients of `ids`, on the device (None: none has a gradient).
pub fn grad_sum_sq(grads: &GradientsParams, ids: &[ParamId]) -> Option<Tensor<1>> {
    ids.iter()
        .filter_map(|&id| grads.get::<2>(id))
        .map(|g| g.square().sum())
        .reduce(|a, b| a + b)
}

/// Scales the gradients of `ids`, whose squared norm is `sum_sq` ([`grad_sum_sq`]), so that
/// their global L2 norm is at most `max_norm` (as torch's `clip_grad_norm_`), on the device: no
/// readback.
pub fn clip_global_norm(
    grads: &mut GradientsParams,
    ids: &[ParamId],
    sum_sq: Tensor<1>,
    max_norm: f64,
) {
    let coef = sum_sq
        .sqrt()
        .add_scalar(1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0)
        .reshape([1, 1]);
    for &id in ids {
        if let Some(g) = grads.remove::<2>(id) {
            grads.register(id, g * coef.clone());
        }
    }
}
