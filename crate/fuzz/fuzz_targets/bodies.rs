#![allow(dead_code)] // each target uses one of these
//! What each fuzz target does with its input. Shared by the libFuzzer targets (next to this file)
//! and by `crate/core/tests/fuzz_smoke.rs`, which runs them over the seed corpus and mutations of it in
//! CI. Every input must give `Ok` or an error: a panic, an abort or an out-of-memory is a bug.

use webtune::base_model::BaseModel;
use webtune::checkpoint::CheckpointFile;
use webtune::data::files::{FileOptions, Read, read_file};
use webtune::data::records::FileFormat;
use webtune::data::{Dataset, tokenize_files};
use webtune::formats::Checkpoint as _;
use webtune::formats::peft::Adapter;
use webtune::formats::safetensors::SafetensorsCheckpoint;
use webtune::memory::{MemoryLimits, ModelShape, WASM32_BYTES, estimate};
use webtune::model::ModelConfig;
use webtune::spec::{DataSpec, RunSpec};
use webtune::tokenizer::Tokenizer;
use webtune::train::Trainer;

/// The tiny fixture model: a valid base for adapters, checkpoints and text.
pub const TINY_GGUF: &[u8] = include_bytes!("../../../tests/fixtures/tiny-llama-q.gguf");

fn tiny() -> BaseModel {
    BaseModel::from_gguf(
        "tiny.gguf",
        TINY_GGUF.to_vec(),
        &webtune::device::cpu().autodiff(),
    )
    .expect("the fixture loads")
}

/// The tiny model's tokenizer, built once: the `text` target needs only this, and loading the
/// model for every input made it the slowest target (53,767 runs in 10 minutes).
fn tiny_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| tiny().tokenizer)
}

/// The tiny model, loaded once for the targets that only read with it (its tokenizer and chat
/// template). One a thread: a model's tensors are not shared between threads.
fn with_tiny<R>(f: impl FnOnce(&BaseModel) -> R) -> R {
    thread_local! {
        static BASE: BaseModel = BaseModel::from_gguf("tiny.gguf", TINY_GGUF.to_vec(), &webtune::device::cpu())
            .expect("the fixture loads");
    }
    BASE.with(f)
}

/// The fixed text the training bodies train on (and `fuzz_smoke.rs`'s checkpoint seed was made
/// from), tokenized by `tokenizer` and split into windows as `spec` says.
pub fn fixed_text_windows(tokenizer: &Tokenizer, spec: &RunSpec) -> webtune::Result<Dataset> {
    let text = "the cat sat on the mat and the dog sat on the log. ".repeat(20);
    let (docs, _) = tokenize_files([("a.txt", text.as_bytes())], tokenizer);
    Dataset::split(&docs, Some(2), &spec.data, spec.train.seed)
}

/// A GGUF model file: header, metadata, tokenizer, tensors, the model built from them; and its
/// header alone, as the page reads it before loading (the first bytes of a file said to be
/// longer), with the memory estimate made from it.
pub fn gguf(data: &[u8]) {
    let _ = BaseModel::from_gguf("fuzz.gguf", data.to_vec(), &webtune::device::cpu());
    let len = data.len() as u64 + u64::from(data.first().copied().unwrap_or(0)) * 4096;
    if let Ok(shape) = ModelShape::from_gguf_head("fuzz.gguf", data.to_vec(), len) {
        memory_estimates(&shape, len);
    }
}

/// The memory estimate of a model for the default run and a heavy one, under the page's limits.
fn memory_estimates(shape: &ModelShape, file_bytes: u64) {
    let limits = MemoryLimits {
        total: Some(WASM32_BYTES),
        buffer: Some(1 << 28),
    };
    let mut heavy = RunSpec::default();
    heavy.train.batch_size = 512;
    heavy.data.seq_len = 8192;
    for spec in [RunSpec::default(), heavy] {
        let e = estimate(shape, &spec, None, Some(file_bytes), limits);
        assert_eq!(e.fits, e.advice.is_none(), "{e:?}");
    }
}

/// A GGUF model file that loads as a small model, then used as the page uses one: loaded with
/// its frozen weights in f16 (the page's default on the CPU), a prompt and two generated tokens
/// through the KV cache (a few rows by the f16 weights), and one LoRA training step on text
/// tokenized by its own tokenizer. Inputs that do not load, or hold over 2^20 parameters (a
/// step's time), end early.
pub fn gguf_use(data: &[u8]) {
    use webtune::generate::{SamplingConfig, generate_blocking};
    let device = webtune::device::cpu().autodiff();
    let Ok(mut base) = BaseModel::from_gguf_with("fuzz.gguf", data.to_vec(), &device, true) else {
        return;
    };
    if base.config.num_parameters() > 1 << 20 {
        return;
    }
    let vocab = base.config.vocab_size().max(1) as u32;
    let prompt: Vec<u32> = (0..3u32).map(|i| (7 * i + 1) % vocab).collect();
    let _ = generate_blocking(
        &base.model,
        &prompt,
        &SamplingConfig::greedy(2),
        &[],
        |_| true,
    );
    let mut spec = RunSpec::default();
    spec.data.seq_len = 8;
    spec.train.steps = 1;
    spec.train.batch_size = 2;
    spec.exec.base_f16 = true;
    let Ok(data) = fixed_text_windows(&base.tokenizer, &spec) else {
        return;
    };
    if webtune::lora::attach(&mut base.model, &spec.lora, 0).is_err() {
        return;
    }
    if let Ok(mut t) = Trainer::new(base.model, data, spec) {
        let _ = pollster::block_on(t.step());
    }
}

/// A safetensors file: header, then every tensor read.
pub fn safetensors(data: &[u8]) {
    if let Ok(ckpt) = SafetensorsCheckpoint::single("fuzz.safetensors", data.to_vec()) {
        for name in ckpt.names() {
            let _ = ckpt.load(name);
        }
    }
}

/// A PEFT adapter: `adapter_config.json`, a NUL byte, `adapter_model.safetensors`; applied to
/// the tiny model.
pub fn peft_adapter(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(config) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let weights = data.get(split + 1..).unwrap_or_default().to_vec();
    if let Ok(adapter) = Adapter::parse(config, weights) {
        let mut base = tiny();
        let _ = adapter.apply(&mut base.model);
    }
}

/// A Hugging Face `config.json`.
pub fn hf_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ModelConfig::from_json("config.json", text);
        if let Ok(shape) = ModelShape::from_config_json("config.json", text) {
            memory_estimates(&shape, 1 << 30);
        }
    }
}

/// A `tokenizer.json`, then encoding and decoding with it.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(tok) = Tokenizer::from_json("tokenizer.json", data, None)
        && let Ok(ids) = tok.encode("Hello, world! 123 ½ 日本語 <|im_start|>")
    {
        let _ = tok.decode(&ids, true);
    }
}

/// A text file to train on: checked, tokenized by the tiny model, split into windows.
pub fn text(data: &[u8]) {
    let (docs, _) = tokenize_files([("fuzz.txt", data)], tiny_tokenizer());
    let split = DataSpec {
        seq_len: 16,
        val_fraction: 0.1,
        ..DataSpec::default()
    };
    let _ = Dataset::split(&docs, Some(2), &split, 0);
}

/// A checkpoint file, resumed on the tiny model with a fixed text.
pub fn checkpoint(data: &[u8]) {
    let Ok(file) = CheckpointFile::parse("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    let base = tiny();
    if let Ok(data) = fixed_text_windows(&base.tokenizer, &file.state.spec) {
        let _ = Trainer::resume(base.model, data, &file, &base.name);
    }
}

/// Chat data as a person adds it: the first byte picks how the rest is read (JSON Lines, a JSON
/// array, CSV or TSV with its columns found by name), its records rendered with the tiny model's
/// chat template and tokenized, then split into windows with the prompts masked.
pub fn chat_data(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let (name, format) = match kind % 4 {
        0 => ("fuzz.jsonl", FileFormat::JsonLines),
        1 => ("fuzz.json", FileFormat::Json),
        2 => ("fuzz.csv", FileFormat::Csv),
        _ => ("fuzz.tsv", FileFormat::Csv),
    };
    let options = FileOptions {
        format: Some(format),
        ..FileOptions::default()
    };
    with_tiny(|base| {
        let Ok((_, Some(Read::Chat(file)))) = read_file(name, bytes, &options, base) else {
            return;
        };
        let spec = DataSpec {
            seq_len: 16,
            val_fraction: 0.2,
            ..DataSpec::default()
        };
        let eos = base.stop_tokens().first().copied();
        let _ = Dataset::build(&[], &[file], eos, &spec, 0);
    });
}

/// A ZIP archive (an adapter folder zipped): every entry read, inflated and CRC-checked.
pub fn zip(data: &[u8]) {
    let _ = webtune::formats::zip::read("fuzz.zip", data, 1 << 20);
}

/// A run specification as JSON (a CLI `--config` file, the page's or the JS API's settings),
/// then validated.
pub fn run_spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = RunSpec::from_json("run.json", text)
    {
        let _ = spec.validate();
        let _ = spec.to_json();
    }
}
