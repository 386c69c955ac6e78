//! The commands and their implementation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::report::Report;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use webtune::checkpoint::{self, CheckpointFile};
use webtune::data::Dataset;
use webtune::data::files::FileOptions;
use webtune::data::records::CsvColumns;
use webtune::formats::merged;
use webtune::formats::peft::{self, Adapter, AdapterDtype};
use webtune::generate::{SamplingConfig, generate_blocking};
use webtune::kernels::FrozenProducts;
use webtune::lora::LoraConfig;
use webtune::spec::{DataSpec, RunSpec};
use webtune::train::{RunStatus, Trainer};
use webtune::{BaseModel, device};

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
        /// Tokens a window [default: 128, or the model's context if it is shorter]
        #[arg(long)]
        seq_len: Option<usize>,
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
    /// Print a shell's completions for the command (`webtune completions bash > FILE`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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

/// `train`'s arguments. The run's settings start from `--config` (a run spec in JSON, as
/// `OUT/webtune-run.json` holds it) or the defaults, and each flag typed on the command line
/// changes its one setting (named after the flag in brackets).
#[derive(Args)]
struct TrainArgs {
    /// A .gguf file, or a folder with config.json, tokenizer.json and safetensors.
    #[arg(long)]
    model: PathBuf,
    /// Files to learn from: plain text, or chat data (.jsonl / .json records of messages,
    /// prompt/completion or instruction/output; .csv / .tsv with a prompt and a response
    /// column), rendered with the model's chat template, the answers learned.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// CSV files' prompt and response columns, as `PROMPT,RESPONSE` [default: found by their
    /// names: prompt / instruction / question ..., completion / response / answer ...].
    #[arg(long, value_delimiter = ',', num_args = 2)]
    columns: Vec<String>,
    /// Folder to write adapter_config.json and adapter_model.safetensors into (and the run's
    /// settings, webtune-run.json).
    #[arg(long)]
    out: PathBuf,
    /// A run spec (JSON: data, lora, train, optim, exec; every key optional, an unknown one an
    /// error) to start from instead of the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from a preset instead of the defaults: quick (the defaults), tiny (rank 1, an
    /// adapter in f16 of ~130 kB for SmolLM2-135M), thorough (every linear layer, rank 16, 300
    /// steps); flags typed change their one setting.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// Continue training this PEFT adapter instead of starting fresh.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// [lora.r]
    #[arg(long, default_value_t = LoraConfig::default().r)]
    rank: usize,
    /// [lora.alpha]
    #[arg(long, default_value_t = LoraConfig::default().alpha)]
    alpha: f64,
    /// [lora.dropout]
    #[arg(long, default_value_t = LoraConfig::default().dropout)]
    dropout: f64,
    /// Comma-separated module names, or all-linear [lora.targets; default: the family's:
    /// q_proj,v_proj on Llama, c_attn on GPT-2].
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// [lora.use_rslora]
    #[arg(long)]
    rslora: bool,
    /// [optim.lr]
    #[arg(long, default_value_t = RunSpec::default().optim.lr)]
    lr: f64,
    /// [train.steps]
    #[arg(long, default_value_t = RunSpec::default().train.steps)]
    steps: usize,
    /// [data.seq_len]
    #[arg(long, default_value_t = DataSpec::default().seq_len)]
    seq_len: usize,
    /// [train.batch_size]
    #[arg(long, default_value_t = RunSpec::default().train.batch_size)]
    batch: usize,
    /// [train.grad_accum]
    #[arg(long, default_value_t = RunSpec::default().train.grad_accum)]
    grad_accum: usize,
    /// Share of the text held out for validation [data.val_fraction].
    #[arg(long, default_value_t = DataSpec::default().val_fraction)]
    val_fraction: f64,
    /// [train.eval_every]
    #[arg(long, default_value_t = RunSpec::default().train.eval_every)]
    eval_every: usize,
    /// Validation windows per evaluation, spread evenly over the held-out text (0 = all)
    /// [train.eval_windows].
    #[arg(long, default_value_t = RunSpec::default().train.eval_windows)]
    eval_windows: usize,
    /// [train.seed]
    #[arg(long, default_value_t = RunSpec::default().train.seed)]
    seed: u64,
    /// Save memory: keep only each decoder layer's input for the backward pass and run the layer
    /// again there (one layer's activations at a time instead of all; one more forward pass)
    /// [exec.recompute]. The same gradients: a resumed run may switch it on.
    #[arg(long)]
    recompute: bool,
    /// Keep the frozen base in f16, converted as it loads: half its memory; products still run
    /// in f32, from the weights rounded to f16 [exec.base_f16]. A resumed run follows its
    /// checkpoint.
    #[arg(long)]
    base_f16: bool,
    /// With `--base-f16`: the frozen products in 16-bit integers, as the page computes them on the
    /// CPU [exec.products = "int16"]. On x86-64 with AVX2 (and AVX512-VNNI) faster than f32;
    /// elsewhere a portable reference, slower.
    #[arg(long, requires = "base_f16")]
    int16: bool,
    /// Save a checkpoint (adapter, optimizer state, data order, history) to
    /// --out/checkpoint.safetensors every this many steps (0: never); `--resume` continues from
    /// it [train.checkpoint_every].
    #[arg(long, default_value_t = RunSpec::default().train.checkpoint_every)]
    checkpoint_every: usize,
    /// Continue the interrupted run whose checkpoint is in this folder, exactly where it was
    /// (same model and text files; the settings come from the checkpoint).
    #[arg(long, conflicts_with_all = ["adapter", "config", "preset"])]
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
    /// Also write OUT/recipe/: the run taken further with PyTorch + transformers + PEFT
    /// (train_peft.py, for one GPU or `accelerate launch` on many), with the run's settings,
    /// its windows as trained and its adapter to continue.
    #[arg(long)]
    recipe: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// Print nothing but errors.
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// Print each progress report as a line of JSON on stdout (for scripts); messages stay on
    /// stderr.
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    fn file_options(&self) -> FileOptions {
        FileOptions {
            format: None,
            columns: CsvColumns {
                prompt: self.columns.first().cloned(),
                response: self.columns.get(1).cloned(),
            },
        }
    }

    /// `spec` with the settings typed on the command line (clap ids in `typed`) put in.
    fn apply_to(&self, spec: &mut RunSpec, typed: &[&str]) {
        for id in typed {
            match *id {
                "rank" => spec.lora.r = self.rank,
                "alpha" => spec.lora.alpha = self.alpha,
                "dropout" => spec.lora.dropout = self.dropout,
                "targets" => spec.lora.targets = self.targets.clone(),
                "rslora" => spec.lora.use_rslora = self.rslora,
                "lr" => spec.optim.lr = self.lr,
                "steps" => spec.train.steps = self.steps,
                "seq_len" => spec.data.seq_len = self.seq_len,
                "batch" => spec.train.batch_size = self.batch,
                "grad_accum" => spec.train.grad_accum = self.grad_accum,
                "val_fraction" => spec.data.val_fraction = self.val_fraction,
                "eval_every" => spec.train.eval_every = self.eval_every,
                "eval_windows" => spec.train.eval_windows = self.eval_windows,
                "seed" => spec.train.seed = self.seed,
                "recompute" => spec.exec.recompute = self.recompute,
                "base_f16" => spec.exec.base_f16 = self.base_f16,
                "int16" => spec.exec.products = Some(FrozenProducts::Int16),
                "checkpoint_every" => spec.train.checkpoint_every = self.checkpoint_every,
                _ => {}
            }
        }
    }
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

/// The `train` arguments that are settings of the run (clap ids; [`TrainArgs::apply_to`]).
const TRAIN_SETTINGS: [&str; 18] = [
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
    "recompute",
    "base_f16",
    "int16",
    "checkpoint_every",
];
/// The ones a PEFT adapter fixes.
const LORA_SETTINGS: [&str; 5] = ["rank", "alpha", "dropout", "targets", "rslora"];
/// The ones a resumed run may change: how often it saves, and memory for time (the same
/// gradients).
const RESUME_SETTINGS: [&str; 2] = ["checkpoint_every", "recompute"];

fn run(cli: Cli, typed: &[&str]) -> webtune::Result<()> {
    match cli.command {
        Command::Info { model } => {
            let base = open_model(&model, &device::cpu(), false)?;
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
            // What the default run would take, each way of saving memory (webtune::memory).
            use webtune::memory::{MemoryLimits, ModelShape, WASM32_BYTES, estimate, human};
            let shape = ModelShape::of(c);
            let needs = |base_f16: bool, recompute: bool| {
                let mut spec = webtune::spec::RunSpec::default();
                spec.exec.base_f16 = base_f16;
                spec.exec.recompute = recompute;
                human(estimate(&shape, &spec, None, None, MemoryLimits::default()).training)
            };
            println!(
                "memory, the default run: ~{} (32-bit weights), ~{} (--base-f16), ~{} \
                 (--base-f16 --recompute); the page's CPU backend has {}",
                needs(false, false),
                needs(true, false),
                needs(true, true),
                human(WASM32_BYTES)
            );
            Ok(())
        }
        Command::Train(args) => train(args, typed),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "webtune",
                &mut std::io::stdout(),
            );
            Ok(())
        }
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
            if let Some(path) = &gguf {
                // Never the model it reads (not even with --force), nor another file unasked.
                let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
                if same(path, &model) || same(path, &adapter) {
                    return Err(webtune::Error::Invalid(format!(
                        "--gguf {}: that is the model or adapter being merged",
                        path.display()
                    )));
                }
                if path.is_dir() {
                    return Err(webtune::Error::Invalid(format!(
                        "--gguf {}: a folder; name the file to write",
                        path.display()
                    )));
                }
                if path.exists() && !force {
                    return Err(webtune::Error::Invalid(format!(
                        "--gguf {}: the file exists; pass --force to overwrite it",
                        path.display()
                    )));
                }
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
            let seq_len = seq_len.unwrap_or_else(|| {
                let default = DataSpec::default().seq_len;
                base.model
                    .max_positions()
                    .map_or(default, |max| default.min(max))
            });
            let all = DataSpec {
                seq_len,
                val_fraction: 0.0,
                ..DataSpec::default()
            };
            let dataset = read_data(&data, &base, &all, 0, &FileOptions::default())?;
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

/// The model `model` names: a `.gguf` file or a Hugging Face folder, or a model id
/// (`org/name`, fetched from the hub into its cache: [`crate::hub`]). With `base_f16`, its
/// frozen matrices kept in f16 as they are read.
pub fn open_model(
    model: &Path,
    device: &burn::tensor::Device,
    base_f16: bool,
) -> webtune::Result<BaseModel> {
    let Some(id) = model.to_str().and_then(crate::hub::parse) else {
        return BaseModel::from_path_with(model, device, base_f16);
    };
    let fetched = crate::hub::fetch(&id)?;
    let mut base = BaseModel::from_path_with(&fetched.path, device, base_f16)?;
    // A GGUF from a repository of them: the base model its card names, else the file's own.
    if let Some(base_id) = fetched.base_id {
        base.hub_id = Some(base_id);
    }
    Ok(base)
}

/// The base model, with a PEFT adapter applied when one is given.
fn load_model(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    device: DeviceChoice,
) -> webtune::Result<BaseModel> {
    let mut base = open_model(model, &pick_device(device)?, false)?;
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

/// Reads the files as the page does ([`webtune::data::files::read_file`]: plain text, or chat
/// data's records by their names), reports the unusable ones and the records left out, and
/// splits the rest into windows.
pub fn read_data(
    paths: &[PathBuf],
    base: &BaseModel,
    data: &DataSpec,
    seed: u64,
    options: &FileOptions,
) -> webtune::Result<Dataset> {
    use webtune::data::files::{Read, read_file};
    let (mut docs, mut chats) = (Vec::new(), Vec::new());
    for p in paths {
        let name = p.display().to_string();
        let bytes = std::fs::read(p).map_err(|e| webtune::Error::io(&name, e))?;
        let (info, read) = read_file(&name, &bytes, options, base)?;
        if let Some(reason) = &info.skipped {
            eprintln!("skipped {name}: {reason}");
        }
        for problem in &info.problems {
            eprintln!(
                "{name}, line {}: {} (left out)",
                problem.line, problem.message
            );
        }
        if info.problem_count > info.problems.len() {
            eprintln!(
                "{name}: {} more records left out",
                info.problem_count - info.problems.len()
            );
        }
        match read {
            Some(Read::Text(doc)) => docs.push(doc),
            Some(Read::Chat(file)) => {
                eprintln!("{name}: {} examples of chat data", file.examples.len());
                chats.push(file);
            }
            None => {}
        }
    }
    let eos = base.stop_tokens().first().copied();
    let dataset = Dataset::build(&docs, &chats, eos, data, seed)?;
    let counts = &dataset.examples;
    if counts.truncated + counts.dropped > 0 {
        eprintln!(
            "{} example(s) cut to the sequence length, {} left out (their prompt fills it)",
            counts.truncated, counts.dropped
        );
    }
    Ok(dataset)
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

/// The run spec file written beside the adapter: `--config` takes it back.
const RUN_SPEC_FILE: &str = "webtune-run.json";

fn train(a: TrainArgs, typed: &[&str]) -> webtune::Result<()> {
    let refused: Vec<&str> = typed
        .iter()
        .copied()
        .filter(|t| !RESUME_SETTINGS.contains(t))
        .collect();
    if a.resume.is_some() && !refused.is_empty() {
        return Err(webtune::Error::Invalid(format!(
            "--resume continues a run with its own settings: leave out {}",
            flags(&refused)
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
    let preset = a
        .preset
        .as_deref()
        .map(webtune::defaults::preset)
        .transpose()?;
    let mut spec = match (&resumed, &a.config, &preset) {
        (Some(file), _, _) => file.state.spec.clone(),
        (None, Some(path), _) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| webtune::Error::io(&shown, e))?;
            RunSpec::from_json(&shown, &text)?
        }
        (None, None, Some(p)) => p.spec.clone(),
        (None, None, None) => RunSpec::default(),
    };
    a.apply_to(&mut spec, typed);
    spec.validate()?;
    let mut base = open_model(&a.model, &device, spec.exec.base_f16)?;
    // The default sequence length comes down to what the model reads at once (as the page's
    // does); one typed or in a config file is checked as given.
    if let (None, None, Some(max)) = (&resumed, &a.config, base.model.max_positions())
        && !typed.contains(&"seq_len")
        && spec.data.seq_len > max
    {
        eprintln!(
            "sequence length {max}: the model reads at most {max} tokens at once (the default is {})",
            spec.data.seq_len
        );
        spec.data.seq_len = max;
    }
    let mut trainer = match &resumed {
        Some(file) => {
            let st = &file.state;
            let data = read_data(
                &a.data,
                &base,
                &spec.data,
                spec.train.seed,
                &a.file_options(),
            )?;
            eprintln!(
                "resuming the run of {} at step {} of {}",
                st.base_model, st.step, spec.train.steps
            );
            let mut trainer = Trainer::resume(base.model, data, file, &base.name)?;
            trainer.set_checkpoint_every(spec.train.checkpoint_every);
            trainer.set_recompute(spec.exec.recompute);
            trainer
        }
        None => {
            match &a.adapter {
                Some(dir) => {
                    let adapter = load_adapter(dir)?;
                    adapter.apply(&mut base.model)?;
                    spec.lora = adapter.lora_config();
                    eprintln!(
                        "continuing the adapter in {} (r={}, alpha={}) with a fresh AdamW state \
                         and a new learning-rate schedule; to continue an interrupted run exactly, \
                         use --resume with its checkpoint",
                        dir.display(),
                        spec.lora.r,
                        spec.lora.alpha
                    );
                }
                None => {
                    webtune::lora::attach(&mut base.model, &spec.lora, spec.train.seed)?;
                }
            }
            let data = read_data(
                &a.data,
                &base,
                &spec.data,
                spec.train.seed,
                &a.file_options(),
            )?;
            Trainer::new(base.model, data, spec)?
        }
    };
    write_atomically(
        &a.out.join(RUN_SPEC_FILE),
        trainer.spec().to_json().as_bytes(),
    )?;
    let report = Report::new(a.quiet, a.json, trainer.spec().train.steps);
    let data = trainer.dataset();
    report.note(&format!(
        "{}: {} training windows, {} validation windows ({} held-out files); {} trainable parameters",
        base.name,
        data.train.len(),
        data.val.len(),
        data.val_documents.len(),
        trainer.model().num_lora_parameters()
    ));
    let checkpoint_path = a.out.join(checkpoint::FILE_NAME);
    // The training loop is the core's (Trainer::next): it steps, pauses and says when a
    // checkpoint is due; here the reports are printed and checkpoints written.
    let mut failure = None;
    let first_step = trainer.steps_done();
    loop {
        if a.pause_after == Some(trainer.steps_done() - first_step) {
            trainer.pause();
        }
        let p = match pollster::block_on(trainer.next()) {
            Ok(p) => p,
            // A non-finite step stopped the run: the trainer kept the adapter from before it,
            // which is still worth writing (when a step was taken); the command fails all the
            // same.
            Err(e @ webtune::Error::NonFinite(_)) if trainer.steps_done() > 0 => {
                failure = Some(e);
                break;
            }
            Err(e) => return Err(e),
        };
        if matches!(p.status, RunStatus::Running | RunStatus::Finished) {
            report.progress(&p);
        }
        if p.checkpoint_due {
            let bytes = pollster::block_on(trainer.checkpoint(&base.name))?;
            write_atomically(&checkpoint_path, &bytes)?;
        }
        match p.status {
            RunStatus::Running => {}
            RunStatus::Paused => {
                report.finish();
                report.note(&format!(
                    "paused after step {}: continue with --resume {}",
                    trainer.steps_done(),
                    a.out.display()
                ));
                return Ok(());
            }
            RunStatus::Finished | RunStatus::Stopped => break,
        }
    }
    report.finish();
    let after = trainer.history.last().and_then(|p| p.val_loss);
    if let Some(l) = after {
        report.note(&format!(
            "after training: val {l:.3} (perplexity {:.2})",
            l.exp()
        ));
    }
    let dtype = if a.f16 || preset.as_ref().is_some_and(|p| p.export_f16) {
        AdapterDtype::F16
    } else {
        AdapterDtype::F32
    };
    let base_id = base.hub_id.as_deref().unwrap_or(&base.name);
    let files = pollster::block_on(peft::export(trainer.model(), base_id, dtype))?;
    if a.recipe {
        let dir = a.out.join("recipe");
        let recipe =
            webtune::recipe::files(trainer.spec(), base_id, trainer.dataset(), Some(&files));
        for (name, bytes) in &recipe {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| webtune::Error::io(parent.display().to_string(), e))?;
            }
            write_atomically(&path, bytes)?;
        }
    }
    let model = trainer.into_model();
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
    report.note(&format!("wrote {}", a.out.display()));
    match failure {
        Some(e) => Err(e),
        None => {
            // The run is done: its checkpoint has nothing left to resume.
            let _ = std::fs::remove_file(&checkpoint_path);
            Ok(())
        }
    }
}
