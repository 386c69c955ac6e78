//! Hostile input, one test per kind of bad input that the Rust core owns (the page's are
//! in tests/e2e): each input gets a clear error naming the file or the setting, or the documented
//! behaviour. None may panic or allocate for a size it has not checked.
// Native only: reads fixtures from disk (the CLI end to end is crate/cli/tests/cli.rs, the browser
// tests crate/wasm/tests/browser.rs).

use crate::common::gguf_writer::{TensorEntry, rewrite, tiny_gguf};
use crate::common::*;
use webtune::burn::module::Param;
use webtune::burn::tensor::Tensor;
use webtune::data::{Dataset, Document, tokenize_files};
use webtune::formats::gguf::{GgufFile, Value};
use webtune::formats::peft::{self, Adapter, AdapterDtype};
use webtune::formats::safetensors::SafetensorsCheckpoint;
use webtune::formats::{Checkpoint, HostTensor};
use webtune::lora::{self, LoraConfig};
use webtune::model::ModelConfig;
use webtune::session::Session;
use webtune::spec::{DataSpec, RunSpec};
use webtune::train::{RunStatus, Trainer};
use webtune::{BaseModel, Error, NamedFile};

fn load_gguf(bytes: Vec<u8>) -> Result<BaseModel, Error> {
    BaseModel::from_gguf("hostile.gguf", bytes, &webtune::device::cpu())
}

fn set(meta: &mut [(String, Value)], key: &str, value: Value) {
    meta.iter_mut().find(|(k, _)| k == key).unwrap().1 = value;
}

/// The error's message (printed, so a failing assertion shows it).
fn message<T>(result: Result<T, Error>) -> String {
    match result {
        Ok(_) => panic!("hostile input was accepted"),
        Err(e) => {
            let m = e.to_string();
            println!("{m}");
            m
        }
    }
}

fn hf_files(edit_config: impl Fn(&str) -> String, tokenizer_json: String) -> Vec<NamedFile> {
    let dir = fixtures().join("tiny-llama-untied");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    vec![
        NamedFile::new("config.json", edit_config(&config).into_bytes()),
        NamedFile::new(
            "model.safetensors",
            std::fs::read(dir.join("model.safetensors")).unwrap(),
        ),
        NamedFile::new("tokenizer.json", tokenizer_json.into_bytes()),
    ]
}

/// A byte-level BPE tokenizer over the tiny models' 96 ids; `last_id` renumbers its last token.
fn tokenizer_json(last_id: u32) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..96u32)
        .map(|i| {
            let id = if i == 95 { last_id } else { i };
            (char::from_u32(0x21 + i).unwrap().to_string(), id.into())
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}
    })
    .to_string()
}

fn load_hf(files: Vec<NamedFile>) -> Result<BaseModel, Error> {
    BaseModel::from_hf_files("tiny", files, &webtune::device::cpu())
}

// A layer count of 2^32 - 1 or 2^64 - 1 is refused before a layer is allocated.
#[test]
fn huge_layer_counts_are_refused_before_allocating() {
    for n in [u64::from(u32::MAX), u64::MAX] {
        let m = message(load_gguf(rewrite(|meta, _| {
            set(meta, "llama.block_count", Value::U64(n))
        })));
        assert!(
            m.contains("hostile.gguf") && m.contains("num_hidden_layers") && m.contains("512"),
            "{m}"
        );
    }
    let files = hf_files(
        |c| {
            c.replace(
                "\"num_hidden_layers\": 2",
                "\"num_hidden_layers\": 4294967295",
            )
        },
        tokenizer_json(95),
    );
    let m = message(load_hf(files));
    assert!(
        m.contains("config.json") && m.contains("num_hidden_layers"),
        "{m}"
    );
    // Sizes that multiply past 64 bits are caught too (the parameter count saturates).
    let files = hf_files(
        |c| {
            c.replace("\"hidden_size\": 32", "\"hidden_size\": 131072")
                .replace("\"intermediate_size\": 64", "\"intermediate_size\": 131072")
        },
        tokenizer_json(95),
    );
    let m = message(load_hf(files));
    assert!(m.contains("config.json") && m.contains("parameters"), "{m}");
}

// Token ids beyond the embedding (a tokenizer id, the config's or the GGUF's EOS).
#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    // The hf files load as they are: the edits below are what breaks them.
    load_hf(hf_files(|c| c.to_string(), tokenizer_json(95))).unwrap();

    let m = message(load_hf(hf_files(|c| c.to_string(), tokenizer_json(5000))));
    assert!(
        m.contains("token id 5000") && m.contains("vocabulary"),
        "{m}"
    );

    let m = message(load_hf(hf_files(
        |c| c.replace("\"eos_token_id\": 2", "\"eos_token_id\": 5000"),
        tokenizer_json(95),
    )));
    assert!(m.contains("config.json") && m.contains("5000"), "{m}");

    let m = message(load_gguf(rewrite(|meta, _| {
        set(meta, "tokenizer.ggml.eos_token_id", Value::U32(1_000_000))
    })));
    assert!(m.contains("hostile.gguf") && m.contains("1000000"), "{m}");
}

/// Nonsensical numbers in a config (a negative or too small rope_theta, a zero norm epsilon) or
/// in GGUF metadata (NaN, infinite) are refused by name, not run into a model that prints nothing.
#[test]
fn nonsensical_config_values_are_refused_by_name() {
    for (key, value) in [
        ("rope_theta", "-5.0"),
        ("rope_theta", "0.5"),
        ("rms_norm_eps", "0"),
    ] {
        let m = message(load_hf(hf_files(
            |c| {
                let mut j: serde_json::Value = serde_json::from_str(c).unwrap();
                j[key] = serde_json::Value::from(0);
                j.to_string()
                    .replace(&format!("\"{key}\":0"), &format!("\"{key}\":{value}"))
            },
            tokenizer_json(95),
        )));
        assert!(
            m.contains("config.json") && m.contains(key),
            "{key} {value}: {m}"
        );
    }
    let m = message(load_gguf(rewrite(|meta, _| {
        meta.retain(|(k, _)| k != "llama.rope.freq_base");
        meta.push(("llama.rope.freq_base".into(), Value::F32(f32::NAN)));
    })));
    assert!(m.contains("hostile.gguf") && m.contains("rope"), "{m}");
    let m = message(load_gguf(rewrite(|meta, _| {
        meta.retain(|(k, _)| k != "llama.attention.layer_norm_rms_epsilon");
        meta.push((
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(f32::INFINITY),
        ));
    })));
    assert!(
        m.contains("hostile.gguf") && m.contains("rms_norm_eps"),
        "{m}"
    );
}

/// A GGUF v3 file with no tensors and one metadata array of `count` items of `item_type`,
/// followed by `payload` bytes.
fn gguf_with_array(item_type: u32, count: u64, payload: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    b.extend(3u64.to_le_bytes());
    b.extend(b"big");
    b.extend(9u32.to_le_bytes()); // array
    b.extend(item_type.to_le_bytes());
    b.extend(count.to_le_bytes());
    b.resize(b.len() + payload, 0);
    b
}

// An array whose count equals the bytes left: each item needs its own size in the file,
// and no array may hold more items than webtune reads.
#[test]
fn gguf_array_counts_are_checked_before_reserving() {
    let bytes = gguf_with_array(10, 4096, 4096); // 4096 u64 need 32 KiB, the file has 4 KiB
    let m = message(GgufFile::parse("hostile.gguf", bytes));
    assert!(
        m.contains("hostile.gguf") && m.contains("more than the rest"),
        "{m}"
    );

    let n = webtune::limits::MAX_GGUF_ARRAY + 1;
    let bytes = gguf_with_array(0, n as u64, n); // u8 items: the file does hold them
    let m = message(GgufFile::parse("hostile.gguf", bytes));
    assert!(
        m.contains("metadata `big`") && m.contains("more than webtune reads"),
        "{m}"
    );

    // Strings: the count of a string array is checked against 8 bytes a string.
    let bytes = gguf_with_array(8, 1000, 1000);
    let m = message(GgufFile::parse("hostile.gguf", bytes));
    assert!(m.contains("more than the rest"), "{m}");
}

/// The tiny untied model with token `poison`'s embedding row set to infinity.
/// The fixture's checkpoint with one embedding row set to infinity as it is read.
struct Poisoned(SafetensorsCheckpoint, usize);

impl Checkpoint for Poisoned {
    fn file_name(&self) -> &str {
        self.0.file_name()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }
    fn load(&self, name: &str) -> webtune::Result<HostTensor> {
        let mut t = self.0.load(name)?;
        if name == "model.embed_tokens.weight" {
            let hidden = t.shape[1];
            t.data[self.1 * hidden..(self.1 + 1) * hidden].fill(f32::INFINITY);
        }
        Ok(t)
    }
}

fn untied_fixture() -> (ModelConfig, SafetensorsCheckpoint) {
    let dir = fixtures().join("tiny-llama-untied");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = ModelConfig::from_json("config.json", &config).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    (
        config,
        SafetensorsCheckpoint::single("model.safetensors", bytes).unwrap(),
    )
}

// A weight that is not finite is refused as the model loads, naming the tensor: a NaN loss
// later is then the run's settings, never a broken file.
#[test]
fn a_model_with_an_infinite_weight_is_refused_naming_the_tensor() {
    let (config, ckpt) = untied_fixture();
    let device = webtune::device::cpu();
    let e = config
        .load(&Poisoned(ckpt, 5), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("NaN or infinite"),
        "{e}"
    );
}

/// The fixture model, loaded, with one embedding row then set to infinity: a run reaches a
/// non-finite step when a batch holds the token.
fn poisoned_model(poison: usize, device: &webtune::burn::tensor::Device) -> webtune::CausalLM {
    use webtune::burn::module::Param;
    use webtune::burn::tensor::{Tensor, TensorData};
    let (config, ckpt) = untied_fixture();
    let mut model = config.load(&ckpt, device).unwrap();
    let webtune::CausalLM::Llama(m) = &mut model else {
        unreachable!("a Llama fixture")
    };
    let w = &mut m.model.embed_tokens.weight;
    let [vocab, hidden] = w.val().dims();
    let mut values = w.val().into_data().try_to_vec::<f32>().unwrap();
    values[poison * hidden..(poison + 1) * hidden].fill(f32::INFINITY);
    let t = Tensor::<2>::from_data(TensorData::new(values, [vocab, hidden]), device);
    *w = Param::initialized(w.id, t).set_require_grad(false);
    model
}

fn lora_tensors(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    pollster::block_on(peft::lora_tensors(t.model()))
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect()
}

// A step whose loss is not finite stops the run, says which step and why, and the model
// (so the adapter) goes back to what it was after the last step read back finite: the step
// before on the CPU, which reads every step. No non-finite adapter is written.
#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_adapter() {
    let (t, err, snapshot, last_read) = train_until_the_poisoned_window(None, 5, None);
    let step = t.steps_done();
    assert_eq!(last_read, step - 1, "the CPU reads back every step");
    check_stopped_at(t, err, snapshot, step - 1);
}

// As on a GPU, which reads the loss back only every few steps: the fault is found at the next
// read, and the run goes back to the last step read back finite, before the faulty step.
#[test]
fn a_non_finite_loss_read_back_late_keeps_the_last_adapter_read_back_finite() {
    const SEED: u64 = 2;
    let (every_step, ..) = train_until_the_poisoned_window(Some(1), SEED, None);
    let fault = every_step.steps_done();
    let (t, err, snapshot, last_read) = train_until_the_poisoned_window(Some(4), SEED, None);
    let found = t.steps_done();
    assert!(
        !fault.is_multiple_of(4) && fault > 4,
        "the fault is at step {fault}: pick another seed"
    );
    assert_eq!(found, fault.next_multiple_of(4));
    assert_eq!(last_read, found - 4);
    check_stopped_at(t, err, snapshot, last_read);
}

// A pause between reads stores a checkpoint: the steps not yet read back are checked first, so
// that a NaN they left is not kept (a checkpoint with one would not load, and the run be lost).
#[test]
fn a_pause_after_an_unread_non_finite_step_keeps_the_last_adapter_read_back_finite() {
    const SEED: u64 = 2;
    let (every_step, ..) = train_until_the_poisoned_window(Some(1), SEED, None);
    let fault = every_step.steps_done();
    assert!(
        fault % 4 >= 1 && fault % 4 < 3 && fault > 4,
        "fault at {fault}: pick another seed"
    );
    // Paused one step after the fault, before the next read.
    let paused_at = fault + 1;
    let (t, err, snapshot, last_read) =
        train_until_the_poisoned_window(Some(4), SEED, Some(paused_at));
    assert_eq!(t.steps_done(), paused_at);
    assert_eq!(last_read, fault - fault % 4);
    assert!(err.to_string().contains("found at the pause"), "{err}");
    check_stopped_at(t, err, snapshot, last_read);

    // Paused before the fault, two steps after a read: those two unread steps are finite, so the
    // run pauses, goes on, and finds the fault at its next read as without the pause.
    let paused_early = fault - fault % 4 - 2;
    assert!(paused_early % 4 != 0);
    let (t, err, snapshot, last_read) =
        train_until_the_poisoned_window(Some(4), SEED, Some(paused_early));
    assert_eq!(t.steps_done(), fault.next_multiple_of(4));
    assert_eq!(last_read, fault - fault % 4);
    check_stopped_at(t, err, snapshot, last_read);
}

/// Trains the tiny model with a window whose token is poisoned (its embedding holds infinity)
/// until the run fails, reading back every `log_every` steps and pausing once after step
/// `pause_after` (with [`Trainer::next`]); returns the trainer, the error, the LoRA tensors
/// after the last step whose loss was read back (or that a pause checked), and that step.
fn train_until_the_poisoned_window(
    log_every: Option<usize>,
    seed: u64,
    pause_after: Option<usize>,
) -> (Trainer, Error, Vec<(String, Vec<f32>)>, usize) {
    let device = webtune::device::cpu().autodiff();
    const POISON: u32 = 90;
    let mut model = poisoned_model(POISON as usize, &device);
    let mut spec = RunSpec {
        data: DataSpec {
            seq_len: 16,
            val_fraction: 0.1,
            ..DataSpec::default()
        },
        lora: LoraConfig {
            r: 4,
            dropout: 0.0,
            ..LoraConfig::default()
        },
        ..RunSpec::default()
    };
    spec.train.steps = 40;
    spec.train.batch_size = 1;
    spec.train.eval_every = 0;
    // Checkpoints and evaluations are read back too: none until the end.
    spec.train.checkpoint_every = 0;
    spec.train.seed = seed;
    spec.optim.lr = 1e-2;
    spec.exec.log_every = log_every;
    lora::attach(&mut model, &spec.lora, seed).unwrap();
    // One document, split by position (the last 10% for validation): the poisoned token sits in
    // one training window, which a shuffled epoch reaches at some step.
    let mut tokens: Vec<u32> = (0..400).map(|i| 3 + (i * 7) % 40).collect();
    tokens[200] = POISON;
    let docs = [Document {
        name: "a.txt".into(),
        tokens,
    }];
    let data = Dataset::split(&docs, Some(2), &spec.data, 1).unwrap();
    assert!(data.train.iter().any(|w| w.contains(&POISON)));
    let every = log_every.unwrap_or(1);
    let mut t = Trainer::new(model, data, spec).unwrap();
    let mut snapshot = lora_tensors(&t);
    let mut last_read = 0;
    let err = loop {
        if pause_after == Some(t.steps_done()) {
            t.pause();
            match pollster::block_on(t.next()) {
                Ok(p) => {
                    assert_eq!(p.status, RunStatus::Paused);
                    assert!(p.checkpoint_due);
                    snapshot = lora_tensors(&t);
                    last_read = p.step;
                }
                Err(e) => break e,
            }
        }
        match pollster::block_on(t.step()) {
            Ok(p) => {
                assert_eq!(p.train_loss.is_some(), p.step.is_multiple_of(every));
                if let Some(loss) = p.train_loss {
                    assert!(loss.is_finite());
                    snapshot = lora_tensors(&t);
                    last_read = p.step;
                }
            }
            Err(e) => break e,
        }
    };
    (t, err, snapshot, last_read)
}

/// The run stopped with a message naming the failed step and `kept`, the step whose adapter it
/// keeps; that adapter is `snapshot`, bit for bit, and it exports.
fn check_stopped_at(mut t: Trainer, err: Error, snapshot: Vec<(String, Vec<f32>)>, kept: usize) {
    let step = t.steps_done();
    let m = err.to_string();
    println!("{m}");
    assert!(matches!(err, Error::NonFinite(_)), "{err:?}");
    assert!(
        m.contains(&format!("step {step}:"))
            && m.contains("learning rate")
            && m.contains(&format!("as it was after step {kept}.")),
        "{m}"
    );
    assert!(
        step > 1,
        "the poisoned window came first: pick another seed"
    );
    assert!(t.is_finished() && t.failure() == Some(m.as_str()));
    assert!(matches!(
        pollster::block_on(t.step()),
        Err(Error::Invalid(_))
    ));
    assert_eq!(lora_tensors(&t), snapshot);
    let files = pollster::block_on(peft::export(t.model(), "tiny", AdapterDtype::F32)).unwrap();
    assert!(!files.safetensors.is_empty());
}

#[test]
fn a_non_finite_adapter_is_never_written() {
    let device = webtune::device::cpu();
    let mut model = load_fixture_model("tiny-llama-untied", &device);
    let cfg = LoraConfig::default();
    lora::attach(&mut model, &cfg, 0).unwrap();
    let (_, _, proj) = model.projections_mut().into_iter().next().unwrap();
    let branch = proj.lora.as_mut().unwrap();
    let dims = branch.b.val().dims();
    branch.b = Param::from_tensor(Tensor::full(dims, f32::NAN, &device));
    let err = pollster::block_on(peft::export(&model, "tiny", AdapterDtype::F32))
        .err()
        .unwrap();
    assert!(matches!(err, Error::NonFinite(_)), "{err:?}");
    assert!(err.to_string().contains("lora_B"), "{err}");
    // Finite in f32 but beyond f16's range: written in f32, refused in f16 (in PEFT's format and
    // llama.cpp's), where it would be infinite.
    let (_, _, proj) = model.projections_mut().into_iter().next().unwrap();
    let branch = proj.lora.as_mut().unwrap();
    branch.b = Param::from_tensor(Tensor::full(dims, 1e5, &device));
    pollster::block_on(peft::export(&model, "tiny", AdapterDtype::F32)).unwrap();
    let err = pollster::block_on(peft::export(&model, "tiny", AdapterDtype::F16))
        .err()
        .unwrap();
    assert!(err.to_string().contains("f16's range"), "{err}");
    let config = ModelConfig::from_json(
        "config.json",
        &std::fs::read_to_string(fixtures().join("tiny-llama-untied/config.json")).unwrap(),
    )
    .unwrap();
    let gguf = webtune::formats::gguf_lora::export(&model, &config, "tiny", AdapterDtype::F16);
    let err = pollster::block_on(gguf).err().unwrap();
    assert!(err.to_string().contains("f16's range"), "{err}");
}

fn session_with_text() -> Session {
    let mut s = Session::new(webtune::device::cpu());
    s.set_model(load_gguf(tiny_gguf()).unwrap());
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(200);
    s.add_text("fox.txt", text.as_bytes()).unwrap();
    s
}

// Settings typed into the page: each out-of-range one is named, nothing overflows.
#[test]
fn out_of_range_settings_are_named() {
    let s = session_with_text();
    // The tiny model reads 64 positions: its windows shorter than the default 128.
    let short = || {
        let mut spec = RunSpec::default();
        spec.data.seq_len = 32;
        spec
    };
    s.plan(&short()).unwrap();
    let with = |edit: &dyn Fn(&mut RunSpec)| {
        let mut spec = short();
        edit(&mut spec);
        spec
    };
    let cases: Vec<(RunSpec, &str)> = vec![
        (
            with(&|s| s.train.batch_size = 1_000_000_000),
            "train.batch_size",
        ),
        (with(&|s| s.lora.r = 100_000_000), "lora.r"),
        (with(&|s| s.lora.r = 0), "lora.r"),
        (with(&|s| s.train.steps = usize::MAX), "train.steps"),
        (with(&|s| s.data.seq_len = usize::MAX), "data.seq_len"),
        (
            with(&|s| {
                s.train.batch_size = 512;
                s.data.seq_len = 8192;
            }),
            "micro-batch",
        ),
        (with(&|s| s.optim.lr = f64::NAN), "optim.lr"),
        (with(&|s| s.optim.lr = 1e30), "optim.lr"),
        (
            with(&|s| s.train.grad_accum = usize::MAX),
            "train.grad_accum",
        ),
        (with(&|s| s.data.val_fraction = 2.0), "data.val_fraction"),
        (
            with(&|s| s.data.val_fraction = f64::NAN),
            "data.val_fraction",
        ),
        (with(&|s| s.data.val_fraction = -1.0), "data.val_fraction"),
    ];
    for (spec, what) in cases {
        let m = message(s.plan(&spec));
        assert!(m.contains(what), "{what}: {m}");
    }
}

/// A real adapter's files with `edit` applied to its config.
fn adapter_with(edit: impl Fn(&mut serde_json::Value)) -> Result<Adapter, Error> {
    let mut model = load_fixture_model("tiny-llama-untied", &webtune::device::cpu());
    let cfg = LoraConfig::default();
    lora::attach(&mut model, &cfg, 0).unwrap();
    let files = pollster::block_on(peft::export(&model, "tiny", AdapterDtype::F32)).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&files.config_json).unwrap();
    edit(&mut config);
    Adapter::parse(&config.to_string(), files.safetensors)
}

// A PEFT adapter with dropout 1.5 or rank 0.
#[test]
fn adapter_configs_with_impossible_settings_are_refused() {
    adapter_with(|_| {}).unwrap();
    let m = message(adapter_with(|c| c["lora_dropout"] = 1.5.into()));
    assert!(
        m.contains("adapter_config.json") && m.contains("dropout"),
        "{m}"
    );
    let m = message(adapter_with(|c| c["r"] = 0.into()));
    assert!(
        m.contains("adapter_config.json") && m.contains("rank"),
        "{m}"
    );
}

// A chat template of nested loops runs out of fuel instead of running for hours.
#[test]
fn a_runaway_chat_template_fails_with_a_message() {
    let template = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}\
                    x{% endfor %}{% endfor %}{% endfor %}";
    let started = std::time::Instant::now();
    let m = message(webtune::chat::render(
        template,
        &[webtune::chat::Message::user("hi")],
        true,
        "",
        "",
    ));
    assert!(m.contains("chat template"), "{m}");
    // Not a timing test: a billion iterations would take minutes, the fuel stops it at once.
    println!("stopped after {:?}", started.elapsed());
}

// Duplicate metadata keys and tensor names are refused, not first- or last-wins.
#[test]
fn duplicate_gguf_keys_and_tensors_are_refused() {
    let m = message(load_gguf(rewrite(|meta, _| {
        meta.push(("llama.block_count".into(), Value::U32(3)))
    })));
    assert!(m.contains("`llama.block_count` appears twice"), "{m}");
    let m = message(load_gguf(rewrite(|_, tensors| {
        let copy = TensorEntry {
            name: tensors[0].name.clone(),
            shape: tensors[0].shape.clone(),
            dtype: tensors[0].dtype,
            data: tensors[0].data.clone(),
        };
        tensors.push(copy);
    })));
    assert!(
        m.contains("appears twice") && m.contains("hostile.gguf"),
        "{m}"
    );
}

// A text file above the stated size is refused by name, with what to do.
#[test]
fn an_oversized_text_file_is_refused_with_a_message() {
    let tokenizer = load_gguf(tiny_gguf()).unwrap().tokenizer;
    let big = vec![b'a'; webtune::limits::MAX_TEXT_BYTES + 1];
    let (docs, skipped) = tokenize_files([("huge.txt", big.as_slice())], &tokenizer);
    assert!(docs.is_empty());
    assert_eq!(skipped[0].name, "huge.txt");
    assert!(
        skipped[0].reason.contains("64 MB") && skipped[0].reason.contains("split"),
        "{}",
        skipped[0].reason
    );
}

// GPT-2: a GGUF whose width would overflow the MLP's default width (4 x n_embd) when no
// feed_forward_length is given: refused by name, no overflow.
#[test]
fn a_gpt2_gguf_with_an_overflowing_width_is_refused() {
    let bytes = std::fs::read(fixtures().join("tiny-gpt2-q.gguf")).unwrap();
    let file = GgufFile::parse("tiny-gpt2-q.gguf", bytes).unwrap();
    let (mut meta, tensors) = crate::common::gguf_writer::parts(&file);
    meta.retain(|(k, _)| k != "gpt2.feed_forward_length");
    for (k, v) in &mut meta {
        if k == "gpt2.embedding_length" {
            *v = Value::U64(1 << 62);
        }
    }
    let bytes = crate::common::gguf_writer::write(&meta, &tensors);
    let m = message(load_gguf_named("hostile-gpt2.gguf", bytes));
    assert!(
        m.contains("hostile-gpt2.gguf") && m.contains("n_embd"),
        "{m}"
    );
}

fn load_gguf_named(name: &str, bytes: Vec<u8>) -> webtune::Result<BaseModel> {
    BaseModel::from_gguf(name, bytes, &webtune::device::cpu())
}

// Values and names a file or a setting may hold that are wrong without being malformed: each
// refused with what is wrong, where it is.
#[test]
fn wrong_values_are_named_where_they_are() {
    // A LoRA target the model lacks, even beside all-linear.
    let s = session_with_text();
    let mut spec = RunSpec::default();
    spec.data.seq_len = 32;
    spec.lora.targets = vec!["all-linear".into(), "bogus".into()];
    let m = message(s.plan(&spec));
    assert!(m.contains("bogus"), "{m}");

    // Positions beyond the model's context, and attention too large for memory.
    let mut spec = RunSpec::default();
    spec.data.seq_len = 100;
    let m = message(s.plan(&spec));
    assert!(m.contains("64 positions"), "{m}");
    let base = load_gguf(tiny_gguf()).unwrap();
    let m = message(base.model.check_batch(1 << 20, 64, true));
    assert!(
        m.contains("attention scores") && m.contains("Save memory"),
        "{m}"
    );

    // A GGUF whose tensors break its own alignment.
    let bytes = rewrite(|meta, _| {
        meta.retain(|(k, _)| k != "general.alignment");
        meta.push(("general.alignment".into(), Value::U32(4096)));
    });
    let m = message(load_gguf(bytes));
    assert!(m.contains("alignment"), "{m}");

    // A config.json with a byte-order mark reads; one naming no model_type that is not Llama's
    // says so.
    let dir = fixtures().join("tiny-llama-tied");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    ModelConfig::from_json("config.json", &format!("\u{feff}{config}")).unwrap();
    let m = message(ModelConfig::from_json(
        "config.json",
        r#"{"n_embd": 64, "n_layer": 2}"#,
    ));
    assert!(
        m.contains("names no model_type") && m.contains("gpt2"),
        "{m}"
    );
}

// A model's name with a terminal's escape sequences (it is printed, and written into adapters)
// loses its control characters.
#[test]
fn a_name_with_escape_sequences_is_cleaned() {
    let bytes = rewrite(|meta, _| {
        meta.retain(|(k, _)| k != "general.name");
        meta.push((
            "general.name".into(),
            Value::String("evil\u{1b}]0;title\u{7}\u{1b}[2Jname\n".into()),
        ));
    });
    let base = load_gguf(bytes).unwrap();
    assert_eq!(base.name, "evil]0;title[2Jname");
}
