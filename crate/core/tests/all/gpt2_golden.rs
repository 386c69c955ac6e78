//! The GPT-2 family against transformers (`GPT2LMHeadModel`) on a tiny random model
//! (`tests/fixtures/tiny-gpt2`, written by `make_fixtures.py --only gpt2`): logits within 1e-4
//! from the Hugging Face folder (config.json + vocab.json/merges.txt + model.safetensors), from
//! the same weights without the `transformer.` key prefix, and from a GGUF file written as
//! llama.cpp's converter writes GPT-2; greedy tokens through the KV cache; the tokenizer files.
// Native only: reads fixtures from disk (the browser tests are in crate/wasm/tests/browser.rs).

use std::collections::HashMap;

use crate::common::*;
use webtune::formats::HostTensor;
use webtune::formats::safetensors::SafetensorsCheckpoint;
use webtune::generate::{SamplingConfig, generate_blocking};
use webtune::model::{CausalLM, ModelConfig};
use webtune::{BaseModel, NamedFile};

const TOLERANCE: f32 = 1e-4;

fn check_logits(model: &CausalLM, golden: &Golden, what: &str) {
    let device = model.device();
    let (shape, ids) = golden.i64("input_ids");
    let (logit_shape, expected) = golden.f32("logits");
    let logits = model.forward(ids_tensor(&shape, &ids, &device), None);
    assert_eq!(logits.dims().to_vec(), logit_shape);
    let diff = max_abs_diff(&to_vec(logits), &expected);
    println!("{what}: max |webtune - transformers| = {diff:e}");
    assert!(diff < TOLERANCE, "{what}: logits differ by {diff}");
}

fn hf_folder() -> BaseModel {
    BaseModel::from_path(&fixtures().join("tiny-gpt2"), &webtune::device::cpu()).unwrap()
}

#[test]
fn hf_folder_with_gpt2_tokenizer_files_matches_transformers() {
    let base = hf_folder();
    assert_eq!(base.config.model_type(), "gpt2");
    assert!(base.config.tied_embeddings());
    assert_eq!(base.model.lora_targets(), ["c_attn", "c_proj", "c_fc"]);
    assert_eq!(base.model.default_targets(), ["c_attn"]);
    assert!(base.model.fan_in_fan_out());
    check_logits(
        &base.model,
        &Golden::open(&fixtures().join("tiny-gpt2/golden.safetensors")),
        "tiny-gpt2",
    );
}

#[test]
fn weights_without_the_transformer_prefix_load_the_same() {
    // A `GPT2Model` file names its tensors `wte.weight`, `h.0.attn.c_attn.weight`, ...; the
    // causal-mask buffers (`attn.bias`) some files carry are ignored.
    let dir = fixtures().join("tiny-gpt2");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let ckpt = SafetensorsCheckpoint::single("model.safetensors", bytes).unwrap();
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    for name in ckpt.names() {
        use webtune::formats::Checkpoint;
        let t = ckpt.load(name).unwrap();
        tensors.push((name.trim_start_matches("transformer.").to_string(), t));
    }
    tensors.push((
        "h.0.attn.bias".to_string(),
        HostTensor::new(vec![1, 1, 4, 4], vec![1.0; 16]),
    ));
    let stripped =
        webtune::formats::safetensors::write("model.safetensors", &tensors, false, HashMap::new())
            .unwrap();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let files = vec![
        NamedFile::new("config.json", read("config.json")),
        NamedFile::new("vocab.json", read("vocab.json")),
        NamedFile::new("merges.txt", read("merges.txt")),
        NamedFile::new("model.safetensors", stripped),
    ];
    let base = BaseModel::from_hf_files("tiny-gpt2", files, &webtune::device::cpu()).unwrap();
    check_logits(
        &base.model,
        &Golden::open(&dir.join("golden.safetensors")),
        "no prefix",
    );
}

#[test]
fn gguf_written_like_llama_cpp_matches_transformers_loading_it() {
    // Conv1D weights transposed to [out, in], Q8_0 / F16 / F32 tensors, `output.weight` a copy of
    // the embedding (so the head stays tied).
    let bytes = std::fs::read(fixtures().join("tiny-gpt2-q.gguf")).unwrap();
    let base = BaseModel::from_gguf("tiny-gpt2-q.gguf", bytes, &webtune::device::cpu()).unwrap();
    assert_eq!(base.config.model_type(), "gpt2");
    assert!(base.config.tied_embeddings());
    assert_eq!(base.config.context_length(), 64);
    check_logits(
        &base.model,
        &Golden::open(&fixtures().join("tiny-gpt2-q.golden.safetensors")),
        "tiny-gpt2-q.gguf",
    );
}

#[test]
fn greedy_tokens_through_the_kv_cache_match_transformers() {
    let base = hf_folder();
    let golden = Golden::open(&fixtures().join("tiny-gpt2/golden.safetensors"));
    let (shape, ids) = golden.i64("input_ids");
    let (_, want) = golden.i64("greedy_ids");
    let prompt: Vec<u32> = ids[..shape[1]].iter().map(|&x| x as u32).collect();
    let got = generate_blocking(
        &base.model,
        &prompt,
        &SamplingConfig::greedy(want.len()),
        &[],
        |_| true,
    )
    .unwrap();
    let want: Vec<u32> = want.iter().map(|&x| x as u32).collect();
    assert_eq!(got, want);
}

#[test]
fn generation_stops_at_the_last_learned_position() {
    // 64 positions: after a 60-token prompt, new tokens are read at positions 60..=63, so 5 come
    // out (the last one is never read back), whatever was asked.
    let base = hf_folder();
    let prompt: Vec<u32> = (0..60).map(|i| 3 + i % 90).collect();
    let out = generate_blocking(
        &base.model,
        &prompt,
        &SamplingConfig::greedy(20),
        &[],
        |_| true,
    )
    .unwrap();
    assert_eq!(out.len(), 5);
    let too_long: Vec<u32> = vec![5; 65];
    let err = generate_blocking(
        &base.model,
        &too_long,
        &SamplingConfig::greedy(1),
        &[],
        |_| true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("64 positions"), "{err}");
}

#[test]
fn gpt2_tokenizer_files_encode_as_transformers() {
    // GPT2TokenizerFast(vocab=..., merges=...) on the fixture's files (make_fixtures.py prints it).
    let base = hf_folder();
    let ids = base.tokenizer.encode("the rain in spain, then:").unwrap();
    assert_eq!(
        ids,
        [24, 80, 3, 22, 5, 81, 3, 81, 89, 20, 5, 81, 68, 92, 18, 73]
    );
    // `<|...|>` tokens are special: matched whole.
    assert_eq!(base.tokenizer.encode("<|im_start|>").unwrap(), [1]);
}

#[test]
fn unsupported_architectures_are_named_with_the_supported_ones() {
    let err = ModelConfig::from_json("config.json", r#"{"model_type": "bert"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("bert") && err.contains("llama, gpt2"),
        "{err}"
    );
    let config = std::fs::read_to_string(fixtures().join("tiny-gpt2/config.json"))
        .unwrap()
        .replace("\"gelu_new\"", "\"relu\"");
    let err = ModelConfig::from_json("config.json", &config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("relu"), "{err}");
}

#[test]
fn windows_longer_than_the_learned_positions_are_refused() {
    // 64 positions: evaluating or training on 65-token inputs is an error, not a panic.
    let base = hf_folder();
    let windows = vec![vec![5u32; 66]];
    let err = pollster::block_on(webtune::train::evaluate(&base.model, &windows, 1, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("64 positions"), "{err}");
    let data = webtune::data::Dataset {
        seq_len: 65,
        train: windows.clone(),
        val: Vec::new(),
        val_documents: Vec::new(),
        examples: Default::default(),
        val_prompts: Vec::new(),
    };
    let device = webtune::device::cpu().autodiff();
    let mut model = BaseModel::from_path(&fixtures().join("tiny-gpt2"), &device)
        .unwrap()
        .model;
    webtune::lora::attach(&mut model, &Default::default(), 0).unwrap();
    let mut spec = webtune::RunSpec::default();
    spec.data.seq_len = 65;
    spec.train.batch_size = 1;
    let err = webtune::train::Trainer::new(model, data, spec)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("64 positions"), "{err}");
}
