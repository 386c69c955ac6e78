//! The Llama model against transformers: logits of tiny random models (tied, untied with an
//! explicit head_dim, f16, sharded bf16, quantized GGUF) must equal transformers' within 1e-4.
// Native only: reads fixtures and fetched files from disk (the browser tests are in crate/wasm/tests/browser.rs).

use crate::common::*;
use webtune::burn::tensor::Device;
use webtune::formats::Checkpoint;
use webtune::formats::gguf::{GgufCheckpoint, GgufFile};
use webtune::formats::safetensors::SafetensorsCheckpoint;
use webtune::generate::{SamplingConfig, generate_blocking};
use webtune::model::{CausalLM, ModelConfig};

const TOLERANCE: f32 = 1e-4;

fn device() -> Device {
    webtune::device::cpu()
}

fn load_dir(name: &str) -> (CausalLM, Golden) {
    let dir = fixtures().join(name);
    let config_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = ModelConfig::from_json("config.json", &config_text).unwrap();
    let index = dir.join("model.safetensors.index.json");
    let ckpt: Box<dyn Checkpoint> = if index.exists() {
        let text = std::fs::read_to_string(&index).unwrap();
        Box::new(
            SafetensorsCheckpoint::sharded("model.safetensors.index.json", &text, |f| {
                Ok(std::fs::read(dir.join(f)).unwrap())
            })
            .unwrap(),
        )
    } else {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        Box::new(SafetensorsCheckpoint::single("model.safetensors", bytes).unwrap())
    };
    let model = config.load(ckpt.as_ref(), &device()).unwrap();
    (model, Golden::open(&dir.join("golden.safetensors")))
}

fn check_logits(model: &CausalLM, golden: &Golden, what: &str) {
    let (shape, ids) = golden.i64("input_ids");
    let (logit_shape, expected) = golden.f32("logits");
    let logits = model.forward(ids_tensor(&shape, &ids, &device()), None);
    assert_eq!(logits.dims().to_vec(), logit_shape);
    let diff = max_abs_diff(&to_vec(logits), &expected);
    println!("{what}: max |webtune - transformers| = {diff:e}");
    assert!(diff < TOLERANCE, "{what}: logits differ by {diff}");
}

#[test]
fn tied_embeddings_match_transformers() {
    let (model, golden) = load_dir("tiny-llama-tied");
    let has_head = |m: &CausalLM| m.hf_tensors().iter().any(|(n, _, _)| n == "lm_head.weight");
    assert!(!has_head(&model));
    check_logits(&model, &golden, "tied");
}

#[test]
fn untied_head_and_explicit_head_dim_match_transformers() {
    let (model, golden) = load_dir("tiny-llama-untied");
    assert!(
        model
            .hf_tensors()
            .iter()
            .any(|(n, _, _)| n == "lm_head.weight")
    );
    // head_dim 12: q_proj is 32 -> 4 x 12, not 4 x 8.
    let (path, _, q) = &model.projections()[0];
    assert_eq!(
        (path.as_str(), q.dims()),
        ("model.layers.0.self_attn.q_proj", [32, 48])
    );
    check_logits(&model, &golden, "untied");
}

#[test]
fn f16_checkpoint_matches_transformers() {
    let (model, golden) = load_dir("tiny-llama-f16");
    check_logits(&model, &golden, "f16");
}

#[test]
fn sharded_bf16_checkpoint_matches_transformers() {
    let (model, golden) = load_dir("tiny-llama-sharded-bf16");
    check_logits(&model, &golden, "sharded bf16");
}

#[test]
fn quantized_gguf_matches_transformers_loading_the_same_file() {
    // Q8_0, Q4_0, Q4_1, F16 and F32 tensors, q/k permuted as llama.cpp stores them.
    let bytes = std::fs::read(fixtures().join("tiny-llama-q.gguf")).unwrap();
    let gguf = GgufFile::parse("tiny-llama-q.gguf", bytes).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert!(config.tied_embeddings());
    let ckpt = GgufCheckpoint::new(gguf, config.gguf_map());
    let model = config.load(&ckpt, &device()).unwrap();
    let golden = Golden::open(&fixtures().join("tiny-llama-q.golden.safetensors"));
    check_logits(&model, &golden, "quantized gguf");
}

#[test]
fn kv_cache_gives_the_same_logits_and_greedy_tokens_as_transformers() {
    let (model, golden) = load_dir("tiny-llama-untied");
    let (shape, ids) = golden.i64("input_ids");
    let (_, expected) = golden.f32("logits");
    let (t, vocab) = (shape[1], expected.len() / (shape[0] * shape[1]));

    // Feed the first sequence in chunks of 4, 1, 6 tokens through the cache.
    let mut cache = model.new_cache();
    let mut got = Vec::new();
    let mut pos = 0;
    for len in [4, 1, 6] {
        let chunk = &ids[pos..pos + len];
        let logits = model.forward(ids_tensor(&[1, len], chunk, &device()), Some(&mut cache));
        got.extend(to_vec(logits));
        pos += len;
    }
    assert_eq!(pos, t);
    assert_eq!(cache.len(), t);
    let diff = max_abs_diff(&got, &expected[..t * vocab]);
    assert!(diff < TOLERANCE, "cached logits differ by {diff}");

    let prompt: Vec<u32> = ids[..t].iter().map(|&x| x as u32).collect();
    let out =
        generate_blocking(&model, &prompt, &SamplingConfig::greedy(8), &[], |_| true).unwrap();
    let (_, greedy) = golden.i64("greedy_ids");
    let greedy: Vec<u32> = greedy.iter().map(|&x| x as u32).collect();
    assert_eq!(
        out, greedy,
        "greedy continuation differs from transformers' generate()"
    );
}
