//! The webtune command line: the same core as the page, for people, tests and benchmarks.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use webtune::generate::{SamplingConfig, generate_blocking};
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
enum DeviceChoice {
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pick_device(choice: DeviceChoice) -> webtune::Result<burn::tensor::Device> {
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

fn run(cli: Cli) -> webtune::Result<()> {
    match cli.command {
        Command::Info { model } => {
            let base = BaseModel::from_path(&model, &device::cpu())?;
            let c = &base.config;
            println!("name: {}", base.name);
            println!("parameters: {}", c.num_parameters());
            println!(
                "layers {} hidden {} intermediate {} heads {} kv heads {} head_dim {} vocab {}",
                c.num_hidden_layers,
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.num_key_value_heads(),
                c.head_dim(),
                c.vocab_size
            );
            println!("tied embeddings: {}", c.tie_word_embeddings);
            println!("chat template: {}", base.tokenizer.chat_template.is_some());
            Ok(())
        }
        Command::Generate {
            model,
            prompt,
            chat,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            device,
        } => {
            let base = BaseModel::from_path(&model, &pick_device(device)?)?;
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
