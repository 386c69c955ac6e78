//! One person's fine-tuning session, as the page runs it: a base model, text files, a training
//! run, samples, the adapter. Plain Rust (testable natively); `web/` only binds it to JavaScript.

use burn::tensor::Device;
use serde::Serialize;

use crate::base_model::BaseModel;
use crate::checkpoint::CheckpointFile;
use crate::data::files::Read;
pub use crate::data::files::{FileOptions, MAX_PROBLEMS_SHOWN, TextInfo};
use crate::data::{Dataset, Document, ExampleFile};
use crate::error::{Error, Result};
use crate::formats::peft::{self, AdapterDtype, AdapterFiles};
use crate::generate::{SamplingConfig, generate};
use crate::spec::RunSpec;
use crate::train::{Progress, Trainer};

/// What the page shows about a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    /// The Hugging Face id, where known (`BaseModel::hub_id`): adapters name it as their base.
    pub hub_id: Option<String>,
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
    /// What chat data's examples became: training, validation, cut, left out.
    pub examples: crate::data::ExampleCounts,
    /// A few held-out prompts to compare the base and the adapted model with.
    pub val_prompts: Vec<String>,
    pub tokens_per_step: usize,
    /// How many times the run goes over the training text.
    pub epochs: f64,
    /// Seconds the run should take here, from a measured step ([`Session::measure`]), when one
    /// was measured.
    pub estimated_secs: Option<f64>,
    /// The memory the run should take, and whether it fits here.
    pub memory: crate::memory::MemoryEstimate,
}

/// What the next run continues instead of fresh LoRA matrices: an adapter (its matrices; a
/// fresh AdamW), or a saved run (its matrices and AdamW's state).
struct Opened {
    info: AdapterInfo,
    /// The base with the adapter's branches: what generation compares before any run.
    model: crate::model::CausalLM,
    /// A saved run's checkpoint, when that is what was opened.
    checkpoint: Option<CheckpointFile>,
}

/// An adapter opened to continue or to compare ([`Session::open_adapter`]).
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    pub name: String,
    /// Its LoRA settings (a run that continues it keeps them).
    pub lora: crate::lora::LoraConfig,
    pub parameters: usize,
    /// Whether AdamW's state came with it (a webtune checkpoint): the continued run picks the
    /// optimizer up where it was.
    pub optimizer_state: bool,
}

/// Bytes of one file in an adapter's ZIP archive (an adapter is megabytes; a merged model is
/// not an adapter).
const MAX_ADAPTER_FILE: usize = 1 << 30;

/// The page's state.
pub struct Session {
    /// Training device (autodiff); generation uses its inner device.
    device: Device,
    base: Option<BaseModel>,
    /// Plain text files, tokenized.
    docs: Vec<Document>,
    /// Chat data files, rendered and tokenized.
    chats: Vec<ExampleFile>,
    trainer: Option<Trainer>,
    /// Training tokens per second measured on this device with this model.
    speed: Option<f64>,
    /// An adapter the next run continues (and generation compares before it).
    opened: Option<Opened>,
    /// The memory a run may take here (the page's wasm32 module: [`crate::memory::WASM32_BYTES`];
    /// WebGPU: its largest buffer); a run estimated over it is refused with the settings that
    /// would fit.
    memory_limits: crate::memory::MemoryLimits,
}

impl Session {
    /// `device` is where the model lives; training wraps it with autodiff.
    pub fn new(device: Device) -> Self {
        Self {
            device: device.autodiff(),
            base: None,
            docs: Vec::new(),
            chats: Vec::new(),
            trainer: None,
            speed: None,
            opened: None,
            memory_limits: Default::default(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Makes `base` the session's model. Texts are re-tokenized by the caller if needed: they
    /// are dropped here, as are any run and adapter.
    pub fn set_model(&mut self, base: BaseModel) -> ModelInfo {
        self.trainer = None;
        self.opened = None;
        self.docs.clear();
        self.chats.clear();
        self.speed = None;
        let c = &base.config;
        let info = ModelInfo {
            name: base.name.clone(),
            hub_id: base.hub_id.clone(),
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

    /// Adds (or replaces) a file read as its name says ([`Self::add_file`]).
    pub fn add_text(&mut self, name: &str, bytes: &[u8]) -> Result<TextInfo> {
        self.add_file(name, bytes, &FileOptions::default())
    }

    /// Adds (or replaces) a file: plain text, or records of chat data rendered with the model's
    /// chat template ([`crate::data::files::read_file`]). An unusable file is reported, not
    /// added; a record that cannot be read is listed with its line, and the others are added.
    pub fn add_file(
        &mut self,
        name: &str,
        bytes: &[u8],
        options: &FileOptions,
    ) -> Result<TextInfo> {
        self.base()?;
        self.remove_text(name);
        let (info, read) = crate::data::files::read_file(name, bytes, options, self.base()?)?;
        match read {
            Some(Read::Text(doc)) => self.docs.push(doc),
            Some(Read::Chat(file)) => self.chats.push(file),
            None => {}
        }
        Ok(info)
    }

    pub fn remove_text(&mut self, name: &str) {
        self.docs.retain(|d| d.name != name);
        self.chats.retain(|f| f.name != name);
    }

    /// The texts' windows under `spec` (validated whole first, so that a setting out of range
    /// is named before anything is allocated for it).
    fn dataset(&self, spec: &RunSpec) -> Result<Dataset> {
        spec.validate()?;
        let base = self.base()?;
        base.model.check_batch(
            spec.train.batch_size,
            spec.data.seq_len,
            !spec.exec.recompute,
        )?;
        let eos = base.stop_tokens().first().copied();
        Dataset::build(&self.docs, &self.chats, eos, &spec.data, spec.train.seed)
    }

    /// The spec a run of `spec` trains with: an opened adapter's LoRA settings in place of its own.
    fn effective(&self, spec: &RunSpec) -> RunSpec {
        let mut spec = spec.clone();
        if let Some(o) = &self.opened {
            spec.lora = o.info.lora.clone();
        }
        spec
    }

    /// What `spec` would do with the current texts.
    pub fn plan(&self, spec: &RunSpec) -> Result<Plan> {
        let spec = &self.effective(spec);
        let base = self.base()?;
        let data = self.dataset(spec)?;
        let targets = spec.lora.resolve_targets(&base.model)?;
        let dims: Vec<[usize; 2]> = base
            .model
            .projections()
            .iter()
            .filter(|(_, name, _)| targets.contains(name))
            .map(|(_, _, p)| p.dims())
            .collect();
        let trainable = spec.lora.num_parameters(&dims);
        let tokens_per_step = spec.tokens_per_step();
        let estimated_secs = self
            .speed
            .map(|tps| crate::train::estimate_secs(spec, data.val.len(), tps));
        // The weights as they were loaded (a run cannot change that: `start` refuses it).
        let mut as_loaded = spec.clone();
        as_loaded.exec.base_f16 = base.model.base_in_f16();
        let memory = crate::memory::estimate(
            &crate::memory::ModelShape::of(&base.config),
            &as_loaded,
            Some(trainable as u64),
            None,
            self.memory_limits,
        );
        Ok(Plan {
            trainable_parameters: trainable,
            adapter_bytes_f32: trainable * 4,
            adapter_bytes_f16: trainable * 2,
            train_windows: data.train.len(),
            val_windows: data.val.len(),
            train_tokens: data.train_tokens(),
            val_tokens: data.val_tokens(),
            val_documents: data.val_documents.clone(),
            examples: data.examples.clone(),
            val_prompts: data.val_prompts.clone(),
            tokens_per_step,
            epochs: (spec.train.steps * spec.train.batch_size * spec.train.grad_accum) as f64
                / data.train.len().max(1) as f64,
            estimated_secs,
            memory,
        })
    }

    /// The memory a run may take here ([`Plan::memory`] is checked against it; `start` refuses
    /// a run over it). The default: no limit, as natively.
    pub fn set_memory_limits(&mut self, limits: crate::memory::MemoryLimits) {
        self.memory_limits = limits;
    }

    /// The memory a run may take here.
    pub fn memory_limits(&self) -> crate::memory::MemoryLimits {
        self.memory_limits
    }

    /// Times a training step with `spec`'s model settings on a throwaway copy of the model (the
    /// base is not touched) and keeps the speed for [`Plan::estimated_secs`]. Returns training
    /// tokens per second. Which step, of what size: [`crate::train::speed_probe`] (on the CPU
    /// the first step of a window per thread; on a GPU the run's batch after the steps that
    /// compile its kernels, which the run then finds compiled).
    pub async fn measure(&mut self, spec: &RunSpec) -> Result<f64> {
        let data = self.dataset(spec)?;
        let mut model = self.base()?.model.clone();
        crate::lora::attach(&mut model, &spec.lora, spec.train.seed)?;
        let (probe, warmup) = crate::train::speed_probe(spec, &model.device());
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

    /// Starts a new run (LoRA freshly attached to a copy of the base model). `spec.exec.base_f16`
    /// must say how the model was loaded ([`ModelInfo::base_f16`]): the session never converts
    /// its model (the f32 model has been whole in memory, so the peak would not go down).
    pub fn start(&mut self, spec: RunSpec) -> Result<Plan> {
        let spec = self.effective(&spec);
        let plan = self.plan(&spec)?;
        if let Some(advice) = &plan.memory.advice {
            return Err(Error::Invalid(format!("this run {advice}")));
        }
        let data = self.dataset(&spec)?;
        let base = self.base()?;
        let loaded_f16 = base.model.base_in_f16();
        if spec.exec.base_f16 != loaded_f16 {
            let (asked, loaded) = if loaded_f16 {
                ("false", 16)
            } else {
                ("true", 32)
            };
            return Err(Error::Invalid(format!(
                "exec.base_f16 is {asked}, and the model is loaded with {loaded}-bit weights: \
                 load the model as the run says, or set exec.base_f16 to {}",
                !spec.exec.base_f16
            )));
        }
        // Parameters are shared handles: the copy costs no weight memory.
        let trainer = match &self.opened {
            Some(Opened {
                checkpoint: Some(file),
                ..
            }) => Trainer::continue_from(base.model.clone(), data, spec, file)?,
            Some(o) => Trainer::new(o.model.clone(), data, spec)?,
            None => {
                let mut model = base.model.clone();
                crate::lora::attach(&mut model, &spec.lora, spec.train.seed)?;
                Trainer::new(model, data, spec)?
            }
        };
        self.trainer = Some(trainer);
        Ok(plan)
    }

    /// Opens an adapter for the next run to continue (on new texts, with its LoRA settings) and
    /// for generation to compare before it: a PEFT adapter (`adapter_config.json` and
    /// `adapter_model.safetensors`, or a ZIP archive holding them), or a webtune checkpoint (a
    /// saved run: AdamW's state comes with it). The adapter must fit the loaded model.
    pub fn open_adapter(&mut self, files: Vec<crate::NamedFile>) -> Result<AdapterInfo> {
        let base = self.base()?;
        let mut files = files;
        if let [one] = files.as_slice()
            && one.name.to_ascii_lowercase().ends_with(".zip")
        {
            files = crate::formats::zip::read(&one.name, &one.bytes, MAX_ADAPTER_FILE)?
                .into_iter()
                .map(|(name, bytes)| crate::NamedFile::new(name, bytes))
                .collect();
        }
        let find = |name: &str| {
            files
                .iter()
                .find(|f| f.name == name || f.name.ends_with(&format!("/{name}")))
        };
        let name = files.first().map(|f| f.name.clone()).unwrap_or_default();
        let mut model = base.model.clone();
        let (lora, checkpoint) = match (find(peft::CONFIG_FILE), find(peft::WEIGHTS_FILE)) {
            (Some(config), Some(weights)) => {
                let config = std::str::from_utf8(&config.bytes)
                    .map_err(|_| Error::format(peft::CONFIG_FILE, "not UTF-8 text"))?;
                let adapter = peft::Adapter::parse(config, weights.bytes.clone())?;
                adapter.apply(&mut model)?;
                (adapter.lora_config(), None)
            }
            _ => {
                let saved = files
                    .iter()
                    .find(|f| f.name.ends_with(".safetensors"))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{name}: open a PEFT adapter ({} and {}, or a ZIP of them) or a                              webtune checkpoint",
                            peft::CONFIG_FILE,
                            peft::WEIGHTS_FILE
                        ))
                    })?;
                let file = CheckpointFile::parse(&saved.name, saved.bytes.clone())?;
                let lora = file.state.spec.lora.clone();
                crate::train::restore_from(&mut model, &file, &lora)?;
                (lora, Some(file))
            }
        };
        let info = AdapterInfo {
            name,
            parameters: model.num_lora_parameters(),
            lora,
            optimizer_state: checkpoint.is_some(),
        };
        self.opened = Some(Opened {
            info: info.clone(),
            model,
            checkpoint,
        });
        Ok(info)
    }

    /// Forgets the opened adapter: the next run starts with fresh LoRA matrices.
    pub fn close_adapter(&mut self) {
        self.opened = None;
    }

    /// The current run as a checkpoint file ([`crate::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<Vec<u8>> {
        let base = self.base()?;
        let t = self
            .trainer
            .as_ref()
            .ok_or_else(|| Error::Invalid("start a training run first".into()))?;
        t.checkpoint(&base.name).await
    }

    /// Continues the run saved in a checkpoint file (`name` is what to call it in messages).
    /// The model and the text files of that run must be loaded; returns the run's plan.
    pub fn resume(&mut self, name: &str, bytes: Vec<u8>) -> Result<Plan> {
        let file = CheckpointFile::parse(name, bytes)?;
        let spec = &file.state.spec;
        let plan = self.plan(spec)?;
        let data = self.dataset(spec)?;
        let base = self.base()?;
        let trainer = Trainer::resume(base.model.clone(), data, &file, &base.name)?;
        self.trainer = Some(trainer);
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
        self.generate_streaming(prompt, chat, sampling, adapted, |_| true)
            .await
    }

    /// [`Self::generate`], telling `on_text` the completion so far as it grows (whole
    /// characters: a token that ends inside one waits for the next); `on_text` returns false to
    /// stop early.
    pub async fn generate_streaming(
        &self,
        prompt: &str,
        chat: bool,
        sampling: &SamplingConfig,
        adapted: bool,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let base = self.base()?;
        let model = match (&self.trainer, &self.opened, adapted) {
            (Some(t), _, true) => t.model().clone(),
            (None, Some(o), true) => o.model.clone(),
            (None, None, true) => return Err(Error::Invalid("there is no adapter yet".into())),
            (_, _, false) => base.model.clone(),
        };
        let model = burn::module::Module::valid(&model);
        let text = if chat {
            base.chat_prompt(prompt)?
        } else {
            prompt.to_string()
        };
        let ids = base.tokenizer.encode(&text)?;
        let mut so_far = Vec::new();
        let tokenizer = &base.tokenizer;
        let out = generate(&model, &ids, sampling, &base.stop_tokens(), |t| {
            so_far.push(t);
            match tokenizer.decode(&so_far, true) {
                Ok(text) if !text.ends_with('\u{fffd}') => on_text(&text),
                _ => true,
            }
        })
        .await?;
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

    /// The current run taken further ([`crate::recipe`]): a ZIP of a PyTorch + transformers +
    /// PEFT script with the run's settings, its windows as trained, and its adapter to continue.
    pub async fn recipe_zip(&self) -> Result<Vec<u8>> {
        let base = self.base()?;
        let t = self
            .trainer
            .as_ref()
            .ok_or_else(|| Error::Invalid("train first: there is no run to take further".into()))?;
        let adapter = peft::export(t.model(), base.base_model_id(), AdapterDtype::F32).await?;
        let files =
            crate::recipe::files(t.spec(), base.base_model_id(), t.dataset(), Some(&adapter));
        let files: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        Ok(crate::formats::zip::write_stored(&files))
    }

    /// The PEFT adapter of the current run.
    pub async fn export_adapter(&self, dtype: AdapterDtype) -> Result<AdapterFiles> {
        let base = self.base()?;
        let t = self
            .trainer
            .as_ref()
            .ok_or_else(|| Error::Invalid("train first: there is no adapter yet".into()))?;
        peft::export(t.model(), base.base_model_id(), dtype).await
    }
}
