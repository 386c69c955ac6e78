//! The commands and their implementation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use webtune::checkpoint::{self, CheckpointFile};
use webtune::data::{Dataset, SplitConfig, tokenize_files};
use webtune::formats::merged;
use webtune::formats::peft::{self, Adapter, AdapterDtype};
use webtune::generate::{SamplingConfig, generate_blocking};
use webtune::lora::LoraConfig;
use webtune::train::{Progress, RunStatus, TrainConfig, Trainer};
use webtune::{BaseModel, defaults, device};

#[derive(Parser)]
#[command(
    name = "webtune",
    version,
    about = "Fine-tune a language model with LoRA; run it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DeviceChoice {
    /// burn's flex CPU backend
    Cpu,
    /// wgpu (build with --features gpu)
    Gpu,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's configuration and size.
    Info {
        /// A .gguf file, or a folder with config.json, tokenizer.json and safetensors.
        #[arg(long)]
        model: PathBuf,
    },
    /// Fine-tune LoRA matrices on text files and write a PEFT adapter.
    Train(TrainArgs),
    /// Validation loss and perplexity of a model (optionally with an adapter) on text files.
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
        device: DeviceChoice,
    },
    /// Fold an adapter into its base: a Hugging Face folder (model.safetensors, config.json,
    /// tokenizer files) in --out, and with --gguf also a GGUF F16 file (GGUF bases only).
    Merge {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Folder for the merged Hugging Face model.
        #[arg(long)]
        out: PathBuf,
        /// Also write this GGUF file (F16) for llama.cpp.
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Overwrite a model already in --out.
        #[arg(long)]
        force: bool,
    },
    /// Time the benchmark workloads (training steps, evaluation, generation); prints JSON.
    Bench(crate::bench::BenchArgs),
    /// Complete a prompt.
    Generate {
        /// A .gguf file, or a folder with config.json, tokenizer.json and safetensors.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// A PEFT adapter folder to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
        device: DeviceChoice,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// A .gguf file, or a folder with config.json, tokenizer.json and safetensors.
    #[arg(long)]
    model: PathBuf,
    /// Text files to learn from.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Folder to write adapter_config.json and adapter_model.safetensors into.
    #[arg(long)]
    out: PathBuf,
    /// Continue training this PEFT adapter instead of starting fresh.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = LoraConfig::default().r)]
    rank: usize,
    #[arg(long, default_value_t = LoraConfig::default().alpha)]
    alpha: f64,
    #[arg(long, default_value_t = LoraConfig::default().dropout)]
    dropout: f64,
    /// Comma-separated module names, or all-linear [default: the family's: q_proj,v_proj on
    /// Llama, c_attn on GPT-2].
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    #[arg(long)]
    rslora: bool,
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = TrainConfig::default().steps)]
    steps: usize,
    #[arg(long, default_value_t = defaults::SEQ_LEN)]
    seq_len: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch: usize,
    #[arg(long, default_value_t = TrainConfig::default().grad_accum)]
    grad_accum: usize,
    /// Share of the text held out for validation.
    #[arg(long, default_value_t = defaults::VAL_FRACTION)]
    val_fraction: f64,
    #[arg(long, default_value_t = TrainConfig::default().eval_every)]
    eval_every: usize,
    /// Validation windows per evaluation, spread evenly over the held-out text (0 = all).
    #[arg(long, default_value_t = TrainConfig::default().eval_windows)]
    eval_windows: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save memory: keep only each decoder layer's input for the backward pass and run the layer
    /// again there (one layer's activations at a time instead of all; one more forward pass).
    #[arg(long)]
    recompute: bool,
    /// Keep the frozen base in f16, converted as it loads: half its memory (257 of SmolLM2's
    /// 513 MiB); products still run in f32, from the weights rounded to f16 (SmolLM2's first loss
    /// moves by 3e-5, relative; README). A resumed run follows its checkpoint's setting.
    #[arg(long)]
    base_f16: bool,
    /// With `--base-f16`: the frozen products in 16-bit integers, as the page computes them on the
    /// CPU (`kernels::FrozenProducts::Int16`; README "Speed"), to the bit. On x86-64 with AVX2
    /// (and AVX512-VNNI) faster than f32; elsewhere a portable reference, slower.
    #[arg(long, requires = "base_f16")]
    int16: bool,
    /// Save a checkpoint (adapter, optimizer state, data order, history) to
    /// --out/checkpoint.safetensors every this many steps (0: never); `--resume` continues from it.
    #[arg(long, default_value_t = defaults::CHECKPOINT_EVERY)]
    checkpoint_every: usize,
    /// Continue the interrupted run whose checkpoint is in this folder, exactly where it was
    /// (same model and text files; the settings come from the checkpoint).
    #[arg(long, conflicts_with = "adapter")]
    resume: Option<PathBuf>,
    /// Train this many steps, save the checkpoint and stop (continue later with --resume OUT).
    #[arg(long)]
    pause_after: Option<usize>,
    /// Overwrite an adapter already in --out.
    #[arg(long)]
    force: bool,
    /// Also write OUT/adapter.gguf, the adapter for llama.cpp (`llama-cli -m BASE.gguf --lora
    /// OUT/adapter.gguf`).
    #[arg(long)]
    gguf: bool,
    /// Store the adapter in f16 (half the size).
    #[arg(long)]
    f16: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The training settings typed on the command line (not defaults): with --adapter or
    // --resume the settings come from the file, and a typed one must not be ignored silently.
    let typed: Vec<&'static str> = matches
        .subcommand_matches("train")
        .map(|m| {
            TRAIN_SETTINGS
                .iter()
                .copied()
                .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
                .collect()
        })
        .unwrap_or_default();
    match run(cli, &typed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn pick_device(choice: DeviceChoice) -> webtune::Result<burn::tensor::Device> {
    match choice {
        DeviceChoice::Cpu => Ok(device::cpu()),
        #[cfg(feature = "gpu")]
        DeviceChoice::Gpu => device::gpu(),
        #[cfg(not(feature = "gpu"))]
        DeviceChoice::Gpu => Err(webtune::Error::Invalid(
            "this build has no GPU support: rebuild with `--features gpu`".to_string(),
        )),
    }
}

use webtune::burn;

/// The `train` arguments that shape a run (clap ids), and which of them a PEFT adapter fixes.
const TRAIN_SETTINGS: [&str; 14] = [
    "rank",
    "alpha",
    "dropout",
    "targets",
    "rslora",
    "lr",
    "steps",
    "seq_len",
    "batch",
    "grad_accum",
    "val_fraction",
    "eval_every",
    "eval_windows",
    "seed",
];
const LORA_SETTINGS: [&str; 5] = ["rank", "alpha", "dropout", "targets", "rslora"];

fn run(cli: Cli, typed: &[&str]) -> webtune::Result<()> {
    match cli.command {
        Command::Info { model } => {
            let base = BaseModel::from_path(&model, &device::cpu())?;
            let c = &base.config;
            println!("name: {}", base.name);
            println!("family: {}", c.model_type());
            println!("parameters: {}", c.num_parameters());
            println!(
                "layers {} hidden {} vocab {} context {}",
                c.num_layers(),
                c.hidden_size(),
                c.vocab_size(),
                c.context_length()
            );
            println!("tied embeddings: {}", c.tied_embeddings());
            println!("LoRA targets: {}", base.model.lora_targets().join(", "));
            println!("chat template: {}", base.tokenizer.chat_template.is_some());
            Ok(())
        }
        Command::Train(args) => train(args, typed),
        Command::Bench(args) => crate::bench::bench(args),
        Command::Merge {
            model,
            adapter,
            out,
            gguf,
            force,
        } => {
            let shown = out.display().to_string();
            if out.join("model.safetensors").exists() && !force {
                return Err(webtune::Error::Invalid(format!(
                    "{shown} already holds a model; pass --force to overwrite it"
                )));
            }
            let base = load_model(&model, Some(&adapter), DeviceChoice::Cpu)?;
            // Checked before writing anything: a merged GGUF needs a GGUF base.
            let gguf_bytes = match &gguf {
                Some(_) => Some(pollster::block_on(merged::gguf_f16(&base, &base.model))?),
                None => None,
            };
            let files = pollster::block_on(merged::hf_files(&base, &base.model))?;
            std::fs::create_dir_all(&out).map_err(|e| webtune::Error::io(&shown, e))?;
            for (name, bytes) in &files {
                write_atomically(&out.join(name), bytes)?;
            }
            eprintln!("wrote {shown}");
            if let (Some(path), Some(bytes)) = (&gguf, gguf_bytes) {
                write_atomically(path, &bytes)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Eval {
            model,
            adapter,
            data,
            seq_len,
            batch,
            device,
        } => {
            let base = load_model(&model, adapter.as_deref(), device)?;
            let dataset = read_data(&data, &base, seq_len, 0.0, 0)?;
            let loss = pollster::block_on(webtune::train::evaluate(
                &base.model,
                &dataset.train,
                batch,
                0,
            ))?
            .ok_or_else(|| webtune::Error::Invalid("no text to evaluate".into()))?;
            println!(
                "loss {loss:.4}  perplexity {:.2}  ({} tokens)",
                loss.exp(),
                dataset.train_tokens()
            );
            Ok(())
        }
        Command::Generate {
            model,
            prompt,
            chat,
            adapter,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            device,
        } => {
            let base = load_model(&model, adapter.as_deref(), device)?;
            let text = if chat {
                base.chat_prompt(&prompt)?
            } else {
                prompt
            };
            let ids = base.tokenizer.encode(&text)?;
            let cfg = SamplingConfig {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
            };
            // Print as tokens arrive: decode the whole tail and print what is new, so that
            // multi-byte characters split across tokens come out whole.
            let mut generated = Vec::new();
            let mut printed = 0;
            let tokenizer = &base.tokenizer;
            let mut stdout = std::io::stdout();
            generate_blocking(&base.model, &ids, &cfg, &base.stop_tokens(), |t| {
                generated.push(t);
                if let Ok(s) = tokenizer.decode(&generated, true)
                    && s.len() > printed
                    && !s.ends_with('\u{fffd}')
                {
                    let _ = write!(stdout, "{}", &s[printed..]);
                    let _ = stdout.flush();
                    printed = s.len();
                }
                true
            })?;
            println!();
            Ok(())
        }
    }
}

/// The base model, with a PEFT adapter applied when one is given.
fn load_model(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    device: DeviceChoice,
) -> webtune::Result<BaseModel> {
    let mut base = BaseModel::from_path(model, &pick_device(device)?)?;
    if let Some(dir) = adapter {
        load_adapter(dir)?.apply(&mut base.model)?;
    }
    Ok(base)
}

fn load_adapter(dir: &std::path::Path) -> webtune::Result<Adapter> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| webtune::Error::io(path.display().to_string(), e))
    };
    let config = String::from_utf8(read(peft::CONFIG_FILE)?)
        .map_err(|_| webtune::Error::Invalid(format!("{}: not UTF-8", peft::CONFIG_FILE)))?;
    Adapter::parse(&config, read(peft::WEIGHTS_FILE)?)
}

/// Reads and tokenizes the files; unusable ones are reported and skipped.
pub fn read_data(
    paths: &[PathBuf],
    base: &BaseModel,
    seq_len: usize,
    val_fraction: f64,
    seed: u64,
) -> webtune::Result<Dataset> {
    let mut files = Vec::new();
    for p in paths {
        let bytes = std::fs::read(p).map_err(|e| webtune::Error::io(p.display().to_string(), e))?;
        files.push((p.display().to_string(), bytes));
    }
    let (docs, skipped) = tokenize_files(
        files.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
        &base.tokenizer,
    );
    for s in &skipped {
        eprintln!("skipped {}: {}", s.name, s.reason);
    }
    let eos = base.stop_tokens().first().copied();
    Dataset::split(
        &docs,
        eos,
        &SplitConfig {
            seq_len,
            val_fraction,
            seed,
        },
    )
}

/// The llama.cpp adapter's file name in `--out` (with `--gguf`).
const GGUF_ADAPTER: &str = "adapter.gguf";

/// Makes sure the adapter can be written before any time is spent training: `out` is a folder
/// (created if missing) that can be written to and holds no adapter yet (unless `force`).
fn prepare_out(out: &Path, force: bool) -> webtune::Result<()> {
    let shown = out.display().to_string();
    if out.exists() && !out.is_dir() {
        return Err(webtune::Error::Invalid(format!(
            "{shown}: --out must be a folder, and this is a file"
        )));
    }
    let existing: Vec<&str> = [peft::CONFIG_FILE, peft::WEIGHTS_FILE, GGUF_ADAPTER]
        .into_iter()
        .filter(|f| out.join(f).exists())
        .collect();
    if !existing.is_empty() && !force {
        return Err(webtune::Error::Invalid(format!(
            "{shown} already holds an adapter ({}); pass --force to overwrite it, or pick another folder",
            existing.join(", ")
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| webtune::Error::io(&shown, e))?;
    let probe = out.join(".webtune-write-test");
    std::fs::write(&probe, b"").map_err(|e| webtune::Error::io(&shown, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes the adapter's two files, each whole or not at all (a temporary file renamed into
/// place), so an interrupted write never leaves a half-written adapter under the real names.
fn write_adapter(out: &Path, files: &peft::AdapterFiles) -> webtune::Result<()> {
    // Weights first: a config next to the old weights would describe them wrongly.
    write_atomically(&out.join(peft::WEIGHTS_FILE), &files.safetensors)?;
    write_atomically(&out.join(peft::CONFIG_FILE), files.config_json.as_bytes())
}

/// Writes `path` whole or not at all: a temporary file next to it, renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> webtune::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "file".to_string(), |n| n.to_string_lossy().to_string());
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let io = |e| webtune::Error::io(path.display().to_string(), e);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn flags(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn train(a: TrainArgs, typed: &[&str]) -> webtune::Result<()> {
    if a.resume.is_some() && !typed.is_empty() {
        return Err(webtune::Error::Invalid(format!(
            "--resume continues a run with its own settings: leave out {}",
            flags(typed)
        )));
    }
    let typed_lora: Vec<&str> = typed
        .iter()
        .copied()
        .filter(|t| LORA_SETTINGS.contains(t))
        .collect();
    if a.adapter.is_some() && !typed_lora.is_empty() {
        return Err(webtune::Error::Invalid(format!(
            "--adapter continues that adapter with its own rank, alpha, dropout and targets: \
             leave out {}",
            flags(&typed_lora)
        )));
    }
    prepare_out(&a.out, a.force)?;
    let device = pick_device(a.device)?.autodiff();
    // Read before the model loads: a resumed run keeps its own setting of `base_f16`.
    let resumed = match &a.resume {
        Some(dir) => {
            let path = dir.join(checkpoint::FILE_NAME);
            let shown = path.display().to_string();
            let bytes = std::fs::read(&path).map_err(|e| webtune::Error::io(&shown, e))?;
            Some(CheckpointFile::parse(&shown, bytes)?)
        }
        None => None,
    };
    let base_f16 = resumed
        .as_ref()
        .map_or(a.base_f16, |f| f.state.config.base_f16);
    if a.int16 {
        webtune::kernels::set_frozen_products(webtune::kernels::FrozenProducts::Int16);
    }
    let mut base = BaseModel::from_path_with(&a.model, &device, base_f16)?;
    let (mut trainer, val_fraction) = match &resumed {
        Some(file) => {
            let st = &file.state;
            let data = read_data(&a.data, &base, st.seq_len, st.val_fraction, st.config.seed)?;
            eprintln!(
                "resuming the run of {} at step {} of {}",
                st.base_model, st.step, st.config.steps
            );
            let val_fraction = st.val_fraction;
            (
                Trainer::resume(base.model, data, file, &base.name)?,
                val_fraction,
            )
        }
        None => {
            let mut cfg = TrainConfig {
                lora: LoraConfig {
                    r: a.rank,
                    alpha: a.alpha,
                    dropout: a.dropout,
                    targets: a.targets.clone(),
                    use_rslora: a.rslora,
                    ..LoraConfig::default()
                },
                steps: a.steps,
                batch_size: a.batch,
                grad_accum: a.grad_accum,
                lr: a.lr,
                eval_every: a.eval_every,
                eval_windows: a.eval_windows,
                seed: a.seed,
                recompute: a.recompute,
                base_f16: a.base_f16,
                ..TrainConfig::default()
            };
            match &a.adapter {
                Some(dir) => {
                    let adapter = load_adapter(dir)?;
                    adapter.apply(&mut base.model)?;
                    cfg.lora = adapter.lora_config();
                    eprintln!(
                        "continuing the adapter in {} (r={}, alpha={}) with a fresh AdamW state \
                         and a new learning-rate schedule; to continue an interrupted run exactly, \
                         use --resume with its checkpoint",
                        dir.display(),
                        cfg.lora.r,
                        cfg.lora.alpha
                    );
                }
                None => {
                    webtune::lora::attach(&mut base.model, &cfg.lora, cfg.seed)?;
                }
            }
            let data = read_data(&a.data, &base, a.seq_len, a.val_fraction, a.seed)?;
            (Trainer::new(base.model, data, cfg)?, a.val_fraction)
        }
    };
    let data = trainer.dataset();
    eprintln!(
        "{}: {} training windows, {} validation windows ({} held-out files); {} trainable parameters",
        base.name,
        data.train.len(),
        data.val.len(),
        data.val_documents.len(),
        trainer.model().num_lora_parameters()
    );
    if trainer.steps_done() == 0 {
        let before = pollster::block_on(trainer.evaluate())?;
        if let Some(l) = before {
            eprintln!("before: val loss {l:.4}  perplexity {:.2}", l.exp());
        }
    }
    let checkpoint_path = a.out.join(checkpoint::FILE_NAME);
    // The training loop is the core's (Trainer::next): it steps, pauses and says when a
    // checkpoint is due; here the reports are printed and checkpoints written.
    trainer.set_checkpoint_every(a.checkpoint_every);
    let mut failure = None;
    let mut taken = 0;
    loop {
        if a.pause_after == Some(taken) {
            trainer.pause();
        }
        let p = match pollster::block_on(trainer.next()) {
            Ok(p) => p,
            // A non-finite step stopped the run: the trainer kept the adapter from before it,
            // which is still worth writing; the command fails all the same.
            Err(e @ webtune::Error::NonFinite(_)) => {
                failure = Some(e);
                break;
            }
            Err(e) => return Err(e),
        };
        if matches!(p.status, RunStatus::Running | RunStatus::Finished) {
            taken += 1;
            print_progress(&p);
        }
        if p.checkpoint_due {
            let bytes = pollster::block_on(trainer.checkpoint(&base.name, val_fraction))?;
            write_atomically(&checkpoint_path, &bytes)?;
        }
        match p.status {
            RunStatus::Running => {}
            RunStatus::Paused => {
                eprintln!(
                    "\npaused after step {}: continue with --resume {}",
                    trainer.steps_done(),
                    a.out.display()
                );
                return Ok(());
            }
            RunStatus::Finished | RunStatus::Stopped => break,
        }
    }
    eprintln!();
    let after = trainer.history.last().and_then(|p| p.val_loss);
    if let Some(l) = after {
        eprintln!("after:  val loss {l:.4}  perplexity {:.2}", l.exp());
    }
    let dtype = if a.f16 {
        AdapterDtype::F16
    } else {
        AdapterDtype::F32
    };
    let model = trainer.into_model();
    let files = pollster::block_on(peft::export(&model, &base.name, dtype))?;
    write_adapter(&a.out, &files)?;
    if a.gguf {
        let bytes = pollster::block_on(webtune::formats::gguf_lora::export(
            &model,
            &base.config,
            &base.name,
            dtype,
        ))?;
        write_atomically(&a.out.join(GGUF_ADAPTER), &bytes)?;
    }
    eprintln!("wrote {}", a.out.display());
    match failure {
        Some(e) => Err(e),
        None => {
            // The run is done: its checkpoint has nothing left to resume.
            let _ = std::fs::remove_file(&checkpoint_path);
            Ok(())
        }
    }
}

fn print_progress(p: &Progress) {
    const WIDTH: usize = 30;
    let done = WIDTH * p.step / p.total_steps.max(1);
    let bar: String = "#".repeat(done) + &".".repeat(WIDTH - done);
    let loss = p
        .train_loss
        .map_or(String::new(), |l| format!(" loss {l:.3}"));
    let val = p.val_loss.map_or(String::new(), |l| format!(" val {l:.3}"));
    eprint!(
        "\r[{bar}] {}/{}{loss}{val} | {:.0} tok/s | ETA {}   ",
        p.step,
        p.total_steps,
        p.tokens_per_sec,
        duration(p.eta_secs)
    );
    if p.val_loss.is_some() {
        eprintln!();
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
