//! One person's fine-tuning session, as the page runs it: a base model, text files, a training
//! run, samples, the adapter. Plain Rust (testable natively); `web/` only binds it to JavaScript.

use burn::tensor::Device;
use serde::Serialize;

use crate::base_model::BaseModel;
use crate::checkpoint::CheckpointFile;
use crate::data::{Dataset, Document, Skipped, SplitConfig, tokenize_files};
use crate::error::{Error, Result};
use crate::formats::peft::{self, AdapterDtype, AdapterFiles};
use crate::generate::{SamplingConfig, generate};
use crate::train::{Progress, TrainConfig, Trainer};

/// What the page shows about a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub parameters: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub tied_embeddings: bool,
    pub chat_template: bool,
    /// The model family (`llama`, `gpt2`).
    pub family: &'static str,
    /// The projections LoRA can target.
    pub targets: Vec<&'static str>,
    /// The ones a run targets unless told otherwise.
    pub default_targets: Vec<&'static str>,
    /// Whether the frozen base is kept in f16 (loaded with `base_f16` on the CPU backend): the
    /// runs on this model train on its rounded weights.
    pub base_f16: bool,
}

/// A text file as added: its token count, or why it was skipped.
#[derive(Debug, Clone, Serialize)]
pub struct TextInfo {
    pub name: String,
    pub tokens: Option<usize>,
    pub skipped: Option<String>,
}

/// What a training configuration implies, before it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub trainable_parameters: usize,
    pub adapter_bytes_f32: usize,
    pub adapter_bytes_f16: usize,
    pub train_windows: usize,
    pub val_windows: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Files held out for validation (empty when one file is split by position).
    pub val_documents: Vec<String>,
    pub tokens_per_step: usize,
    /// How many times the run goes over the training text.
    pub epochs: f64,
    /// Seconds the run should take here, from a measured step ([`Session::measure`]), when one
    /// was measured.
    pub estimated_secs: Option<f64>,
}

/// The page's state.
pub struct Session {
    /// Training device (autodiff); generation uses its inner device.
    device: Device,
    base: Option<BaseModel>,
    docs: Vec<Document>,
    trainer: Option<Trainer>,
    /// Training tokens per second measured on this device with this model.
    speed: Option<f64>,
    /// The validation share of the current run (its checkpoints record it).
    val_fraction: f64,
}

impl Session {
    /// `device` is where the model lives; training wraps it with autodiff.
    pub fn new(device: Device) -> Self {
        Self {
            device: device.autodiff(),
            base: None,
            docs: Vec::new(),
            trainer: None,
            speed: None,
            val_fraction: 0.1,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Makes `base` the session's model. Texts are re-tokenized by the caller if needed: they
    /// are dropped here, as are any run and adapter.
    pub fn set_model(&mut self, base: BaseModel) -> ModelInfo {
        self.trainer = None;
        self.docs.clear();
        self.speed = None;
        let c = &base.config;
        let info = ModelInfo {
            name: base.name.clone(),
            parameters: c.num_parameters(),
            layers: c.num_layers(),
            hidden_size: c.hidden_size(),
            vocab_size: c.vocab_size(),
            context_length: c.context_length(),
            tied_embeddings: c.tied_embeddings(),
            chat_template: base.tokenizer.chat_template.is_some(),
            family: c.model_type(),
            targets: base.model.lora_targets().to_vec(),
            default_targets: base.model.default_targets().to_vec(),
            base_f16: base.model.base_in_f16(),
        };
        self.base = Some(base);
        info
    }

    pub fn base(&self) -> Result<&BaseModel> {
        self.base
            .as_ref()
            .ok_or_else(|| Error::Invalid("load a base model first".into()))
    }

    /// Adds (or replaces) a text file. Unusable files are reported, not added.
    pub fn add_text(&mut self, name: &str, bytes: &[u8]) -> Result<TextInfo> {
        let base = self.base()?;
        let (docs, skipped): (Vec<Document>, Vec<Skipped>) =
            tokenize_files([(name, bytes)], &base.tokenizer);
        self.docs.retain(|d| d.name != name);
        Ok(
            match (docs.into_iter().next(), skipped.into_iter().next()) {
                (Some(doc), _) => {
                    let tokens = doc.tokens.len();
                    self.docs.push(doc);
                    TextInfo {
                        name: name.into(),
                        tokens: Some(tokens),
                        skipped: None,
                    }
                }
                (None, Some(s)) => TextInfo {
                    name: name.into(),
                    tokens: None,
                    skipped: Some(s.reason),
                },
                (None, None) => TextInfo {
                    name: name.into(),
                    tokens: None,
                    skipped: Some("the file has no text".into()),
                },
            },
        )
    }

    pub fn remove_text(&mut self, name: &str) {
        self.docs.retain(|d| d.name != name);
    }

    fn dataset(&self, cfg: &TrainConfig, seq_len: usize, val_fraction: f64) -> Result<Dataset> {
        cfg.validate(seq_len)?;
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::Invalid(format!(
                "the validation share is {val_fraction}; it must be in [0, 1)"
            )));
        }
        let base = self.base()?;
        let eos = base.stop_tokens().first().copied();
        Dataset::split(
            &self.docs,
            eos,
            &SplitConfig {
                seq_len,
                val_fraction,
                seed: cfg.seed,
            },
        )
    }

    /// What `cfg` would do with the current texts.
    pub fn plan(&self, cfg: &TrainConfig, seq_len: usize, val_fraction: f64) -> Result<Plan> {
        let base = self.base()?;
        base.model.check_length(seq_len)?;
        let data = self.dataset(cfg, seq_len, val_fraction)?;
        let targets = cfg.lora.resolve_targets(&base.model)?;
        let dims: Vec<[usize; 2]> = base
            .model
            .projections()
            .iter()
            .filter(|(_, name, _)| targets.contains(name))
            .map(|(_, _, p)| p.dims())
            .collect();
        let trainable = cfg.lora.num_parameters(&dims);
        let tokens_per_step = cfg.batch_size * cfg.grad_accum * seq_len;
        let estimated_secs = self
            .speed
            .map(|tps| crate::train::estimate_secs(cfg, seq_len, data.val.len(), tps));
        Ok(Plan {
            trainable_parameters: trainable,
            adapter_bytes_f32: trainable * 4,
            adapter_bytes_f16: trainable * 2,
            train_windows: data.train.len(),
            val_windows: data.val.len(),
            train_tokens: data.train_tokens(),
            val_tokens: data.val_tokens(),
            val_documents: data.val_documents.clone(),
            tokens_per_step,
            epochs: cfg.steps as f64 * tokens_per_step as f64 / data.train_tokens().max(1) as f64,
            estimated_secs,
        })
    }

    /// Times a training step with `cfg`'s model settings on a throwaway copy of the model (the
    /// base is not touched) and keeps the speed for [`Plan::estimated_secs`]. Returns training
    /// tokens per second. Which step, of what size: [`crate::train::speed_probe`] (on the CPU
    /// the first step of a window per thread; on a GPU the run's batch after the steps that
    /// compile its kernels, which the run then finds compiled).
    pub async fn measure(
        &mut self,
        cfg: &TrainConfig,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<f64> {
        let data = self.dataset(cfg, seq_len, val_fraction)?;
        let mut model = self.base()?.model.clone();
        crate::lora::attach(&mut model, &cfg.lora, cfg.seed)?;
        let (probe, warmup) = crate::train::speed_probe(cfg, &model.device());
        let mut trainer = Trainer::new(model, data, probe)?;
        let mut before = 0; // tokens_seen counts the whole run's
        for _ in 0..warmup {
            before = trainer.step().await?.tokens_seen;
        }
        let p = trainer.step().await?;
        let tps = p.tokens_seen.saturating_sub(before) as f64 / p.step_secs.max(1e-9);
        self.speed = Some(tps);
        Ok(tps)
    }

    /// Starts a new run (LoRA freshly attached to a copy of the base model).
    pub fn start(
        &mut self,
        mut cfg: TrainConfig,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<Plan> {
        let plan = self.plan(&cfg, seq_len, val_fraction)?;
        let data = self.dataset(&cfg, seq_len, val_fraction)?;
        // The base as it was loaded: converting it here would not lower the peak (the f32
        // model has been whole in memory; README, "Speed"), so a run says what it trains on.
        cfg.base_f16 = self.base()?.model.base_in_f16();
        // Parameters are shared handles: the copy costs no weight memory.
        let mut model = self.base()?.model.clone();
        crate::lora::attach(&mut model, &cfg.lora, cfg.seed)?;
        self.trainer = Some(Trainer::new(model, data, cfg)?);
        self.val_fraction = val_fraction;
        Ok(plan)
    }

    /// The current run as a checkpoint file ([`crate::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<Vec<u8>> {
        let base = self.base()?;
        let t = self
            .trainer
            .as_ref()
            .ok_or_else(|| Error::Invalid("start a training run first".into()))?;
        t.checkpoint(&base.name, self.val_fraction).await
    }

    /// Continues the run saved in a checkpoint file (`name` is what to call it in messages).
    /// The model and the text files of that run must be loaded; returns the run's plan.
    pub fn resume(&mut self, name: &str, bytes: Vec<u8>) -> Result<Plan> {
        let file = CheckpointFile::parse(name, bytes)?;
        let st = &file.state;
        let plan = self.plan(&st.config, st.seq_len, st.val_fraction)?;
        let data = self.dataset(&st.config, st.seq_len, st.val_fraction)?;
        let base = self.base()?;
        let trainer = Trainer::resume(base.model.clone(), data, &file, &base.name)?;
        self.trainer = Some(trainer);
        self.val_fraction = st.val_fraction;
        Ok(plan)
    }

    /// [`Trainer::set_recompute`] for the current run.
    pub fn set_recompute(&mut self, on: bool) -> Result<()> {
        self.trainer
            .as_mut()
            .ok_or_else(|| Error::Invalid("start a training run first".into()))?
            .set_recompute(on);
        Ok(())
    }

    pub fn trainer(&self) -> Option<&Trainer> {
        self.trainer.as_ref()
    }

    /// The current run's training loop, one call at a time ([`Trainer::next`]): a step, or the
    /// pause or stop asked for; the report's `status` says whether to call again and
    /// `checkpoint_due` when to store [`Self::checkpoint`].
    pub async fn step(&mut self) -> Result<Progress> {
        let trainer = self
            .trainer
            .as_mut()
            .ok_or_else(|| Error::Invalid("start a training run first".into()))?;
        trainer.next().await
    }

    /// Asks the current run to pause before its next step.
    pub fn pause(&mut self) {
        if let Some(t) = &mut self.trainer {
            t.pause();
        }
    }

    /// Ends the current run early; its adapter stays available.
    pub fn stop(&mut self) {
        if let Some(t) = &mut self.trainer {
            t.stop();
        }
    }

    /// Validation loss of the base model (or the adapted one) on the current split.
    pub async fn evaluate(&self) -> Result<Option<f32>> {
        match &self.trainer {
            Some(t) => t.evaluate().await,
            None => Err(Error::Invalid("start a training run first".into())),
        }
    }

    /// Completes `prompt` with the base model, or with base + adapter when `adapted` is set and a
    /// run exists. With `chat`, the prompt is a user message in the model's chat format.
    pub async fn generate(
        &self,
        prompt: &str,
        chat: bool,
        sampling: &SamplingConfig,
        adapted: bool,
    ) -> Result<String> {
        let base = self.base()?;
        let model = match (&self.trainer, adapted) {
            (Some(t), true) => t.model().clone(),
            (None, true) => return Err(Error::Invalid("there is no adapter yet".into())),
            (_, false) => base.model.clone(),
        };
        let model = burn::module::Module::valid(&model);
        let text = if chat {
            base.chat_prompt(prompt)?
        } else {
            prompt.to_string()
        };
        let ids = base.tokenizer.encode(&text)?;
        let out = generate(&model, &ids, sampling, &base.stop_tokens(), |_| true).await?;
        base.tokenizer.decode(&out, true)
    }

    /// The current run's adapter for llama.cpp (GGUF LoRA, [`crate::formats::gguf_lora`]).
    pub async fn export_gguf_lora(&self, dtype: AdapterDtype) -> Result<Vec<u8>> {
        let base = self.base()?;
        let t = self
            .trainer
            .as_ref()
            .ok_or_else(|| Error::Invalid("train first: there is no adapter yet".into()))?;
        crate::formats::gguf_lora::export(t.model(), &base.config, &base.name, dtype).await
    }

    /// The base with the current run's adapter folded in, as one file: `(file name, bytes)`. A
    /// GGUF F16 file for a base loaded from GGUF, else a zip of the Hugging Face folder
    /// ([`crate::formats::merged`]).
    pub async fn export_merged(&self) -> Result<(String, Vec<u8>)> {
        let base = self.base()?;
        let t = self
            .trainer
            .as_ref()
            .ok_or_else(|| Error::Invalid("train first: there is no adapter yet".into()))?;
        let stem: String = base
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if base.gguf_metadata.is_some() {
            let bytes = crate::formats::merged::gguf_f16(base, t.model()).await?;
            return Ok((format!("{stem}-merged-f16.gguf"), bytes));
        }
        let files = crate::formats::merged::hf_files(base, t.model()).await?;
        let entries: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        Ok((
            format!("{stem}-merged.zip"),
            crate::formats::zip::write_stored(&entries),
        ))
    }

    /// The PEFT adapter of the current run.
    pub async fn export_adapter(&self, dtype: AdapterDtype) -> Result<AdapterFiles> {
        let base = self.base()?;
        let t = self
            .trainer
            .as_ref()
            .ok_or_else(|| Error::Invalid("train first: there is no adapter yet".into()))?;
        peft::export(t.model(), &base.name, dtype).await
    }
}
