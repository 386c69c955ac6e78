//! The models people have beyond the first files: the Qwen2 family, Llama 3's rotary scaling and
//! K-quant GGUF files, against transformers on tiny random models (`tests/fixtures/
//! make_families.py`): the Hugging Face folders and the GGUF files as llama.cpp writes them
//! (the K-quants quantized by llama.cpp itself), their logits transformers'.

use crate::common::*;
use webtune::BaseModel;
use webtune::model::CausalLM;

fn check(model: &CausalLM, golden: &str, tolerance: f32, what: &str) {
    let golden = Golden::open(&fixtures().join(golden));
    let device = webtune::device::cpu();
    let (shape, ids) = golden.i64("input_ids");
    let (logit_shape, expected) = golden.f32("logits");
    let logits = model.forward(ids_tensor(&shape, &ids, &device), None);
    assert_eq!(logits.dims().to_vec(), logit_shape);
    let diff = max_abs_diff(&to_vec(logits), &expected);
    println!("{what}: max |webtune - transformers| = {diff:e}");
    assert!(diff < tolerance, "{what}: logits differ by {diff}");
}

fn gguf(name: &str) -> BaseModel {
    BaseModel::from_path(&fixtures().join(name), &webtune::device::cpu()).unwrap()
}

#[test]
fn qwen2_folder_and_gguf_match_transformers() {
    let model = load_fixture_model("tiny-qwen2", &webtune::device::cpu());
    // q, k and v carry biases; o does not.
    let names: Vec<String> = model.hf_tensors().into_iter().map(|(n, _, _)| n).collect();
    for bias in ["q_proj", "k_proj", "v_proj"] {
        assert!(
            names.contains(&format!("model.layers.1.self_attn.{bias}.bias")),
            "{bias}"
        );
    }
    assert!(!names.iter().any(|n| n.ends_with("o_proj.bias")));
    check(
        &model,
        "tiny-qwen2/golden.safetensors",
        1e-4,
        "Qwen2 folder",
    );
    let base = gguf("tiny-qwen2.gguf");
    assert_eq!(base.config.model_type(), "qwen2");
    check(
        &base.model,
        "tiny-qwen2.golden.safetensors",
        1e-4,
        "Qwen2 GGUF",
    );
}

#[test]
fn llama3_rope_scaling_matches_transformers_from_config_and_from_gguf_factors() {
    let model = load_fixture_model("tiny-llama3", &webtune::device::cpu());
    check(
        &model,
        "tiny-llama3/golden.safetensors",
        1e-4,
        "Llama 3 scaling (config.json)",
    );
    // The GGUF holds the same weights and llama.cpp's per-frequency factors instead.
    let base = gguf("tiny-llama3.gguf");
    check(
        &base.model,
        "tiny-llama3/golden.safetensors",
        1e-4,
        "Llama 3 scaling (GGUF)",
    );
}

#[test]
fn k_quant_files_match_transformers() {
    for name in ["Q2_K", "Q3_K_M", "Q4_K_M"] {
        let base = gguf(&format!("tiny-kquant-{name}.gguf"));
        let golden = format!("tiny-kquant-{name}.golden.safetensors");
        check(&base.model, &golden, 1e-4, &format!("{name} GGUF"));
    }
}
