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
use crate::data::{self, BatchOrder, Dataset};
use crate::error::{Error, Result};
use crate::lora::LoraBranch;
use crate::model::CausalLM;
use crate::optim::AdamW;
use crate::spec::RunSpec;

/// A progress report, sent after every step (and once before the first: step 0, the base
/// model's validation loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub tokens_seen: usize,
    /// Targets the loss learned so far: `tokens_seen` but for chat data's prompts and padding.
    #[serde(default)]
    pub learned_tokens: usize,
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

/// Input and target ids of some windows; a target marked [`data::NOT_TRAINED`] (chat data's
/// prompt, padding) is [`crate::kernels::IGNORED_TARGET`].
///
/// # Shapes
/// - returns `([n, seq_len], [n, seq_len])`
pub fn batch_tensors(windows: &[&[u32]], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let n = windows.len();
    let t = windows.first().map_or(0, |w| w.len() - 1);
    let mut inputs = Vec::with_capacity(n * t);
    let mut targets = Vec::with_capacity(n * t);
    for w in windows {
        inputs.extend(w[..t].iter().map(|&x| i64::from(data::token_id(x))));
        targets.extend(w[1..].iter().map(|&x| {
            if data::is_trained(x) {
                i64::from(x)
            } else {
                crate::kernels::IGNORED_TARGET
            }
        }));
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
        model.check_batch(batch_size.max(1).min(n), longest, false)?;
    }
    let model = model.valid();
    let device = model.device();
    // The mean over every target scored: each chunk's loss is a mean over its rows (targets not
    // scored adding 0), so it is weighted by its rows, and the sum divided by the targets.
    let scored: usize = sample.iter().map(|w| data::trained_targets(w)).sum();
    if scored == 0 {
        return Ok(None);
    }
    let chunk_loss = |chunk: &[&[u32]]| {
        let (inputs, targets) = batch_tensors(chunk, &device);
        let rows = targets.shape().num_elements();
        model
            .loss_in_blocks(inputs, targets, block_rows)
            .mul_scalar(rows as f64)
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
    Ok(Some(sum / scored as f32))
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
/// `spec` for the probe run on `device`, and how many of its steps to take before the one timed.
///
/// - On the CPU: the first step of a window per shard (one, or `shards::SHARDS` where
///   there are threads to run them at once). A step's time grows with its tokens, so a small
///   batch keeps the wait short, and the first step costs about what the others do (a little
///   more: memory is allocated), so the estimate errs long. One window on two threads left one
///   of them mostly idle.
/// - On a GPU: the run's own batch, after three steps. The first steps compile kernels (tens of
///   seconds, then a fraction of a second), and a step's time hardly grows with its batch there,
///   so a first step of one window made the estimate two orders of magnitude too long. Each
///   step reads its loss back: otherwise a step is timed when its work is queued, not done.
///
/// The timed step is never the probe's last (which would also evaluate), nor one that evaluates.
pub fn speed_probe(spec: &RunSpec, device: &Device) -> (RunSpec, usize) {
    let (batch_size, warmup) = if !crate::device::is_cpu(device) {
        (spec.train.batch_size, 3)
    } else if crate::shards::parallel() {
        (spec.train.batch_size.min(crate::shards::SHARDS), 0)
    } else {
        (1, 0)
    };
    let mut probe = spec.clone();
    probe.train.steps = warmup + 2;
    probe.train.batch_size = batch_size;
    probe.train.grad_accum = 1;
    probe.train.eval_every = 0;
    probe.exec.log_every = Some(1);
    // On the base as it is: an f16 copy beside it would be memory for nothing.
    probe.exec.base_f16 = false;
    (probe, warmup)
}

/// Seconds a run of `spec` should take at `tokens_per_sec` of training: its steps, plus its
/// evaluations (a forward pass costs about a third of a training step on as many tokens).
pub fn estimate_secs(spec: &RunSpec, val_windows: usize, tokens_per_sec: f64) -> f64 {
    let t = &spec.train;
    let step_tokens = spec.tokens_per_step() as f64;
    // Before the first step, then as the run says.
    let evals = 1
        + (1..=t.steps)
            .filter(|&s| s == t.steps || (t.eval_every > 0 && s.is_multiple_of(t.eval_every)))
            .count();
    let eval_windows = if t.eval_windows == 0 {
        val_windows
    } else {
        val_windows.min(t.eval_windows)
    };
    let eval_tokens = (eval_windows * spec.data.seq_len) as f64 / 3.0;
    (t.steps as f64 * step_tokens + evals as f64 * eval_tokens) / tokens_per_sec.max(1e-9)
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
    spec: RunSpec,
    data: Dataset,
    order: BatchOrder,
    device: Device,
    lora_ids: Vec<ParamId>,
    step: usize,
    tokens_seen: usize,
    learned_tokens: usize,
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
    /// `model` must live on an autodiff device and have LoRA attached (see [`crate::lora::attach`]);
    /// `data` made with `spec.data` ([`Dataset::split`]). The model's products become the
    /// spec's ([`RunSpec::products`]): the run's numerics are the spec's, whatever another run in
    /// the same process chose.
    pub fn new(model: CausalLM, data: Dataset, spec: RunSpec) -> Result<Self> {
        let device = model.device();
        if !device.is_autodiff() {
            return Err(Error::Invalid(
                "training needs an autodiff device (device.autodiff())".into(),
            ));
        }
        spec.validate()?;
        if data.seq_len != spec.data.seq_len {
            return Err(Error::Invalid(format!(
                "the windows hold {} tokens and data.seq_len is {}: split the texts with the \
                 run's spec",
                data.seq_len, spec.data.seq_len
            )));
        }
        model.check_batch(spec.train.batch_size, data.seq_len, !spec.exec.recompute)?;
        let model = if spec.exec.base_f16 {
            model.with_base_in_f16().0
        } else {
            model
        };
        let model = model.with_products(spec.products());
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
            spec.optim.adam_beta1,
            spec.optim.adam_beta2,
            spec.optim.adam_epsilon,
            spec.optim.weight_decay,
        );
        let order = BatchOrder::new(data.train.len(), spec.train.batch_size, spec.train.seed);
        Ok(Self {
            last_good: (0, model.clone()),
            model: Some(model),
            optim,
            spec,
            data,
            order,
            device,
            lora_ids,
            step: 0,
            tokens_seen: 0,
            learned_tokens: 0,
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

    /// Turns activation recomputation on or off for the steps to come ([`crate::spec::ExecSpec::recompute`]):
    /// the gradients are the same either way, only memory and time change, so a run may switch
    /// (the page's "Save memory" when it resumes a run that ran out of memory).
    pub fn set_recompute(&mut self, on: bool) {
        self.spec.exec.recompute = on;
    }

    /// The run's settings (with the changes a run may make: [`Self::set_recompute`],
    /// [`Self::set_checkpoint_every`]).
    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn is_finished(&self) -> bool {
        self.stopped || self.step >= self.spec.train.steps
    }

    /// The run as a checkpoint file ([`crate::checkpoint`]): `base_model` names the model it
    /// runs on.
    pub async fn checkpoint(&self, base_model: &str) -> Result<Vec<u8>> {
        let state = RunState {
            format: checkpoint::FORMAT,
            base_model: base_model.to_string(),
            spec: self.spec.clone(),
            data_fingerprint: checkpoint::fingerprint(&self.data),
            step: self.step,
            tokens_seen: self.tokens_seen,
            learned_tokens: self.learned_tokens,
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
        let spec = st.spec.clone();
        // A base in f32 can be rounded to the run's f16 (Trainer::new does), not the reverse.
        if model.base_in_f16() && !spec.exec.base_f16 {
            return Err(Error::Invalid(format!(
                "{}: this run trained on the base's f32 weights, and the model is loaded with \
                 its weights in f16: load it in f32 (without base_f16) to resume the run",
                file.file_name()
            )));
        }
        let moments = restore_from(&mut model, file, &spec.lora)?;
        let train_windows = data.train.len();
        let mut t = Trainer::new(model, data, spec)?;
        if !st.order.fits(train_windows, t.spec.train.batch_size) {
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
        t.learned_tokens = st.learned_tokens;
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

    /// A new run of `spec` on new `data` that continues the LoRA matrices and AdamW's state of
    /// the run saved in `file` (a finished one, say): its own schedule, batches and history
    /// from step 0, the saved run's LoRA settings (`spec.lora` is replaced by them). `model` is
    /// the base model, on an autodiff device.
    pub fn continue_from(
        mut model: CausalLM,
        data: Dataset,
        mut spec: RunSpec,
        file: &CheckpointFile,
    ) -> Result<Self> {
        spec.lora = file.state.spec.lora.clone();
        let moments = restore_from(&mut model, file, &spec.lora)?;
        let mut t = Trainer::new(model, data, spec)?;
        t.optim.steps = file.state.optimizer_steps;
        t.optim.moments = moments;
        Ok(t)
    }

    /// Ends the run early; the model keeps what it learned so far.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Validation windows one evaluation reads.
    pub fn eval_sample_size(&self) -> usize {
        eval_sample(&self.data.val, self.spec.train.eval_windows).len()
    }

    /// Validation loss of the current model.
    pub async fn evaluate(&self) -> Result<Option<f32>> {
        // A run that saves memory keeps evaluation's peak down too.
        let block_rows = if self.spec.exec.recompute {
            crate::kernels::LOSS_BLOCK_ROWS_LOW_MEMORY
        } else {
            crate::kernels::LOSS_BLOCK_ROWS
        };
        evaluate_in_blocks(
            self.model(),
            &self.data.val,
            self.spec.train.batch_size,
            self.spec.train.eval_windows,
            block_rows,
            !self.spec.exec.recompute,
        )
        .await
    }

    /// One optimizer step (with `grad_accum` micro-batches), then validation if it is due.
    pub async fn step(&mut self) -> Result<Progress> {
        if self.is_finished() {
            return Err(Error::Invalid("the run is finished".into()));
        }
        let started = Instant::now();
        let lr = self.spec.lr_at(self.step);
        // Dropout's masks are seeded from the run's seed and the step, so that a run resumed
        // from a checkpoint draws the masks of one never interrupted: on the CPU from streams of
        // the run's own (`shards`, `recompute`), nothing the process shares; on a GPU from its
        // device's generator, seeded here (two runs stepping at once on one GPU device would
        // interleave their draws).
        let seed = step_seed(self.spec.train.seed, self.step);
        if !crate::device::is_cpu(&self.device) {
            self.device.seed(seed);
        }
        let model = self.model.take().expect("model is present between steps");
        let mut accumulator = GradientsAccumulator::<CausalLM>::new();
        let mut loss_sum: Option<Tensor<1>> = None;
        let batches: Vec<Vec<usize>> = (0..self.spec.train.grad_accum)
            .map(|_| self.order.next_batch())
            .collect();
        // The step's loss is the mean over every target it learns: each micro-batch's loss (a
        // mean over its rows, targets not learned adding 0) is weighted by its rows over the
        // step's learned targets. Plain text learns every target: 1 / grad_accum each.
        let learned: usize = batches
            .iter()
            .flatten()
            .map(|&i| data::trained_targets(&self.data.train[i]))
            .sum();
        for (micro, idx) in batches.iter().enumerate() {
            let refs: Vec<&[u32]> = idx.iter().map(|&i| self.data.train[i].as_slice()).collect();
            let rows = refs.len() * self.data.seq_len;
            let scale = rows as f64 / learned.max(1) as f64;
            let (loss, grads) = if self.spec.exec.recompute {
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
                let loss = model.loss(inputs, targets).mul_scalar(scale);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                (loss, grads)
            };
            accumulator.accumulate(&model, grads);
            let detached = loss.detach();
            loss_sum = Some(match loss_sum {
                None => detached,
                Some(s) => s + detached,
            });
            self.tokens_seen += rows;
        }
        self.learned_tokens += learned;
        let mut grads = accumulator.grads();
        let grad_sq = grad_sum_sq(&grads, &self.lora_ids);
        if let (Some(max_norm), Some(sum_sq)) = (self.spec.optim.max_grad_norm, &grad_sq) {
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

    /// The period of [`crate::spec::ExecSpec::log_every`] on this run's device.
    fn log_every(&self) -> usize {
        self.spec
            .exec
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
            0 => self.spec.train.checkpoint_every,
            every => every,
        };
        let period = period.clamp(1, 50);
        RECENT_STEPS.div_ceil(period) * period
    }

    /// Whether a checkpoint is due after the step just taken (unless the run is finished).
    fn checkpoint_due(&self) -> bool {
        let every = self.spec.train.checkpoint_every;
        every > 0 && self.step.is_multiple_of(every)
    }

    /// Whether the model is evaluated after optimizer step `step` (1-based).
    fn eval_due(&self, step: usize) -> bool {
        step >= self.spec.train.steps
            || (self.spec.train.eval_every > 0 && step.is_multiple_of(self.spec.train.eval_every))
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
        let remaining = self.spec.train.steps.saturating_sub(self.step);
        let evals_left = (self.step + 1..=self.spec.train.steps)
            .filter(|&s| self.eval_due(s))
            .count();
        let per_eval = if self.evals > 0 {
            self.eval_secs / self.evals as f64
        } else {
            // Not measured yet: a forward pass over the sample costs about a third of a
            // training step (forward + backward) over as many windows.
            let windows = self.eval_sample_size() as f64;
            per_step * windows
                / (self.spec.train.batch_size * self.spec.train.grad_accum).max(1) as f64
                / 3.0
        };
        Progress {
            step: self.step,
            total_steps: self.spec.train.steps,
            epoch: self.order.epoch,
            tokens_seen: self.tokens_seen,
            learned_tokens: self.learned_tokens,
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
            next_eval_step: (self.step + 1..=self.spec.train.steps).find(|&s| self.eval_due(s)),
            status: RunStatus::Running,
            checkpoint_due: false,
        }
    }

    /// Sets how often a checkpoint is due (0: only on pausing), e.g. for a resumed run.
    pub fn set_checkpoint_every(&mut self, steps: usize) {
        self.spec.train.checkpoint_every = steps;
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
        if self.step == 0 && self.history.is_empty() {
            // Before the first step, the base model's validation loss: what the run improves
            // on (the chart's first point). A call that takes no step.
            if let Some(progress) = self.evaluate_start().await? {
                return Ok(progress);
            }
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

    /// The report of step 0: the validation loss before training, kept in the history (None
    /// without validation windows).
    async fn evaluate_start(&mut self) -> Result<Option<Progress>> {
        let started = Instant::now();
        let Some(loss) = self.evaluate().await? else {
            return Ok(None);
        };
        if !loss.is_finite() {
            // No step was taken: the model itself computes it, whatever the run's settings.
            self.stopped = true;
            let message = format!(
                "the model's validation loss before training is {loss}: its weights (or its \
                 configuration) give NaN or infinite values, so there is nothing to train"
            );
            self.failure = Some(message.clone());
            return Err(Error::NonFinite(message));
        }
        let secs = started.elapsed().as_secs_f64();
        self.eval_secs += secs;
        self.evals += 1;
        let mut progress = self.progress(None, Some(loss), self.spec.lr_at(0), 0.0, Some(secs));
        progress.status = RunStatus::Running;
        self.history.push(progress.clone());
        Ok(Some(progress))
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
            return Err(self.fail(what, self.spec.lr_at(self.step), false));
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
                .unwrap_or_else(|| self.progress(None, None, self.spec.lr_at(self.step), 0.0, None))
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

/// Puts the LoRA matrices of the run saved in `file` into `model` (on its autodiff device: the
/// branches of `lora`'s targets; other projections lose theirs), and returns AdamW's moments
/// for them (none for a checkpoint of step 0).
pub(crate) fn restore_from(
    model: &mut CausalLM,
    file: &CheckpointFile,
    lora: &crate::lora::LoraConfig,
) -> Result<std::collections::BTreeMap<String, crate::optim::Moments>> {
    let targets = lora.resolve_targets(model)?;
    let device = model.device();
    let r = lora.r;
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
        proj.lora = Some(LoraBranch::from_tensors(a, b, lora));
    }
    let mut moments = std::collections::BTreeMap::new();
    if file.state.optimizer_steps == 0 {
        return Ok(moments);
    }
    for (path, _, proj) in model.projections() {
        let Some(branch) = &proj.lora else { continue };
        let [name_a, name_b] = crate::optim::matrix_names(&path);
        for (name, dims) in [(name_a, branch.a.dims()), (name_b, branch.b.dims())] {
            moments.insert(
                name.clone(),
                crate::optim::Moments {
                    exp_avg: file.tensor(&format!("{name}.exp_avg"), dims, &device)?,
                    exp_avg_sq: file.tensor(&format!("{name}.exp_avg_sq"), dims, &device)?,
                },
            );
        }
    }
    Ok(moments)
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
