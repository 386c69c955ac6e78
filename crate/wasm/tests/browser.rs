//! In the browser (wasm-pack test --headless --chrome): LoRA training of the tiny Llama fixture
//! on WebGPU (SwiftShader in CI) and on the CPU backend compiled to wasm, and the JavaScript API.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;
use webtune::burn::tensor::{Device, Tensor};
use webtune::data::Dataset;
use webtune::formats::peft::{self, Adapter, AdapterDtype};
use webtune::formats::safetensors::SafetensorsCheckpoint;
use webtune::lora::{self, LoraConfig};
use webtune::model::CausalLM;
use webtune::model::ModelConfig;
use webtune::spec::RunSpec;
use webtune::train::Trainer;

wasm_bindgen_test_configure!(run_in_browser);

const CONFIG: &str = include_str!("../../../tests/fixtures/tiny-llama-tied/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../../tests/fixtures/tiny-llama-tied/model.safetensors");
const TINY_GGUF: &[u8] = include_bytes!("../../../tests/fixtures/tiny-llama-q.gguf");
const GOLDEN: &[u8] = include_bytes!("../../../tests/fixtures/tiny-llama-tied/golden.safetensors");

/// The tiny Llama fixture (its head tied) on `device`.
fn tiny_model(device: &Device) -> CausalLM {
    let config = ModelConfig::from_json("config.json", CONFIG).unwrap();
    let ckpt = SafetensorsCheckpoint::single("model.safetensors", WEIGHTS.to_vec()).unwrap();
    config.load(&ckpt, device).unwrap()
}

/// `model`'s logits for the golden case's input ids, and transformers' (`[2, 11, 96]`).
async fn logits_and_golden(model: &CausalLM, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let golden = safetensors::SafeTensors::deserialize(GOLDEN).unwrap();
    let ids = golden.tensor("input_ids").unwrap();
    let ids_shape = [ids.shape()[0], ids.shape()[1]];
    let ids: Vec<i64> = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let expected: Vec<f32> = golden
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let ids = webtune::burn::tensor::Tensor::<2, webtune::burn::tensor::Int>::from_data(
        webtune::burn::tensor::TensorData::new(ids, ids_shape),
        device,
    );
    let logits = model.forward(ids, None);
    let got = logits
        .into_data_async()
        .await
        .unwrap()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(got.len(), expected.len());
    (got, expected)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

/// The model's logits in this build on `device` against transformers' (the native golden
/// tests' fixture): the wasm CPU kernels, and WebGPU with burn's fusion and autotuning, compute
/// the same function as PyTorch.
async fn logits_match_transformers(device: &Device) {
    let (got, expected) = logits_and_golden(&tiny_model(device), device).await;
    let diff = max_abs_diff(&got, &expected);
    web_sys_log(&format!("max |webtune - transformers| = {diff:e}"));
    assert!(diff < 1e-4, "logits differ from transformers' by {diff}");
}

/// The frozen base in f16 on the CPU backend, its products in 16-bit integers (wasm's default,
/// `kernels::FrozenProducts::Int16`: the page's "16-bit weights"), whose SIMD kernels run only in
/// wasm: against transformers within the tolerance the native tests hold the portable kernels to
/// (crate/core/tests/int16_products.rs: 1e-2 absolute; measured 6e-3), and not the widened
/// products' logits (the integer products ran).
#[wasm_bindgen_test]
async fn int16_products_match_transformers() {
    use webtune::kernels::FrozenProducts;
    assert_eq!(
        FrozenProducts::platform(),
        FrozenProducts::Int16,
        "wasm's default"
    );
    let device = webtune::device::cpu();
    let (model, saved) = tiny_model(&device).with_base_in_f16();
    assert!(saved > 0);
    let model = model.with_products(FrozenProducts::Int16);
    let (int16, expected) = logits_and_golden(&model, &device).await;
    let model = model.with_products(FrozenProducts::Widened);
    let (widened, _) = logits_and_golden(&model, &device).await;
    assert_ne!(int16, widened, "the int16 products did not run");
    let diff = max_abs_diff(&int16, &expected);
    web_sys_log(&format!(
        "int16 products: max |webtune - transformers| = {diff:e}"
    ));
    assert!(
        diff < 1e-2,
        "int16 logits differ from transformers' by {diff}"
    );
}

/// A few rows (a prompt's, a generated token's) by the frozen base in f16 take its weights as
/// stored (`kernels::cpu::f16_few_rows`, widened a run at a time with wasm SIMD) instead of
/// widening them whole: the logits of 5 tokens (5 rows) against the same tokens in a batch of
/// 4 (20 rows, the widened products), every product summed in its own order.
#[wasm_bindgen_test]
async fn few_rows_of_an_f16_base_compute_what_its_widened_products_do() {
    use webtune::kernels::{FrozenProducts, INT16_MIN_ROWS};
    let device = webtune::device::cpu();
    let (model, _) = tiny_model(&device).with_base_in_f16();
    let model = model.with_products(FrozenProducts::Widened);
    let prompt: [i64; 5] = [3, 17, 5, 29, 11];
    let logits = |batch: usize| {
        let ids = webtune::burn::tensor::TensorData::new(prompt.repeat(batch), [batch, 5]);
        let ids = Tensor::<2, webtune::burn::tensor::Int>::from_data(ids, &device);
        model.forward(ids, None).flatten::<2>(0, 1)
    };
    const { assert!(5 < INT16_MIN_ROWS && 20 >= INT16_MIN_ROWS) };
    let few = host(logits(1)).await;
    let widened = host(logits(4)).await;
    let scale = widened.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(&few, &widened[..few.len()]);
    web_sys_log(&format!("few rows of the f16 base: {diff:e} of {scale}"));
    assert!(diff <= 1e-5 * scale, "few rows' logits differ by {diff}");
}

/// Every f16 bit pattern through the few-rows product (x = 1 by w `[65536, 1]`, read as one
/// column: runs of 512 values through wasm's SIMD widening, and again one by one for the runs
/// with infinities or NaN): the value `cpu::f16_to_f32` gives each (natively held to `half`'s
/// for every pattern).
#[wasm_bindgen_test]
fn few_rows_widen_every_f16_exactly() {
    use webtune::kernels::cpu::{F16View, f16_few_rows, f16_to_f32};
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let n = bits.len();
    let view = F16View {
        bits: &bits,
        start: 0,
        rows: n,
        cols: 1,
        row_stride: 1,
        col_stride: n,
    };
    let mut out = vec![0f32; n];
    f16_few_rows(&[1.0], 1, view, &mut out);
    for (&h, &got) in bits.iter().zip(&out) {
        let want = f16_to_f32(h);
        assert!(
            got == want || (got.is_nan() && want.is_nan()),
            "{h:#06x}: {got} against {want}"
        );
    }
}

async fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data_async()
        .await
        .unwrap()
        .try_to_vec::<f32>()
        .unwrap()
}

async fn base_weights(m: &CausalLM) -> Vec<Vec<f32>> {
    // Every weight under its HF name: embeddings, norms, projections' bases.
    let mut out = Vec::new();
    for (_, _, t) in m.hf_tensors() {
        out.push(host(t).await);
    }
    out
}

fn data() -> Dataset {
    // A repeating pattern: learnable in a few steps.
    let tokens: Vec<u32> = (0..600).map(|i| 3 + (i * 7) % 40).collect();
    let window = |i: usize| tokens[i * 16..i * 16 + 17].to_vec();
    Dataset {
        seq_len: 16,
        train: (0..30).map(window).collect(),
        val: (30..34).map(window).collect(),
        val_documents: Vec::new(),
        examples: Default::default(),
        val_prompts: Vec::new(),
    }
}

/// Trains the tiny model for `steps` steps; the training loss must be read back every
/// `read_every` steps and after the last (exec.log_every by the device).
async fn train_tiny(device: Device, steps: usize, read_every: usize) {
    let device = device.autodiff();
    let config = ModelConfig::from_json("config.json", CONFIG).unwrap();
    let ckpt = SafetensorsCheckpoint::single("model.safetensors", WEIGHTS.to_vec()).unwrap();
    let mut model = config.load(&ckpt, &device).unwrap();
    let lora_cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    lora::attach(&mut model, &lora_cfg, 1).unwrap();
    let before = base_weights(&model).await;
    let mut spec = RunSpec {
        lora: lora_cfg.clone(),
        ..RunSpec::default()
    };
    spec.data.seq_len = data().seq_len;
    spec.train.steps = steps;
    spec.train.batch_size = 4;
    spec.train.eval_every = 0;
    spec.optim.lr = 2e-2;
    spec.optim.warmup_steps = Some(0);
    let mut trainer = Trainer::new(model, data(), spec).unwrap();
    let first = trainer.evaluate().await.unwrap().unwrap();
    let mut last = None;
    while !trainer.is_finished() {
        let p = trainer.step().await.unwrap();
        let due = p.step.is_multiple_of(read_every) || p.step == steps;
        assert_eq!(p.train_loss.is_some(), due, "step {}", p.step);
        assert!(p.train_loss.is_none_or(f32::is_finite));
        last = p.val_loss.or(last);
    }
    let last = last.expect("the last step evaluates");
    web_sys_log(&format!("val loss {first} -> {last}"));
    assert!(last < first - 0.2, "val loss {first} -> {last}");
    assert!(
        before == base_weights(trainer.model()).await,
        "a frozen weight changed"
    );

    let files = peft::export(trainer.model(), "tiny-llama-tied", AdapterDtype::F32)
        .await
        .unwrap();
    let adapter = Adapter::parse(&files.config_json, files.safetensors.clone()).unwrap();
    assert_eq!(adapter.config.r, 4);
    let st = safetensors::SafeTensors::deserialize(&files.safetensors).unwrap();
    let mut names = st.names();
    names.sort_unstable();
    assert_eq!(names.len(), 8);
    assert_eq!(
        names[0],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(st.tensor(names[0]).unwrap().shape(), &[4, 32]);
    assert_eq!(st.tensor(names[1]).unwrap().shape(), &[32, 4]); // q lora_B
    assert_eq!(st.tensor(names[3]).unwrap().shape(), &[16, 4]); // v lora_B (2 kv heads x 8)
}

fn web_sys_log(s: &str) {
    wasm_bindgen_test::console_log!("{s}");
}

#[wasm_bindgen_test]
async fn cpu_backend_trains_lora_in_the_browser() {
    logits_match_transformers(&webtune::device::cpu()).await;
    train_tiny(webtune::device::cpu(), 12, 1).await;
}

#[cfg(feature = "gpu")]
#[wasm_bindgen_test]
async fn webgpu_backend_trains_lora_in_the_browser() {
    // SwiftShader is slow (~0.5 steps/s here): few steps, a high learning rate.
    let device = Device::wgpu_options()
        .init_async()
        .await
        .expect("WebGPU (run Chromium with --enable-unsafe-webgpu)");
    logits_match_transformers(&device).await;
    // On a GPU the loss is read back every few steps (each read drains the queue).
    train_tiny(device, 6, webtune::defaults::GPU_LOG_EVERY).await;
}

#[wasm_bindgen_test]
async fn javascript_api_runs_a_whole_session() {
    use webtune_wasm::WebSession;
    let s = WebSession::create("cpu".into()).await.unwrap();
    let backend: serde_json::Value = serde_wasm_bindgen::from_value(s.backend().unwrap()).unwrap();
    assert_eq!(backend["kind"], "cpu");
    // The CPU backend holds f16 weights ("16-bit weights" is offered).
    assert_eq!(backend["f16_weights"], true);
    let info: serde_json::Value = serde_wasm_bindgen::from_value(
        s.load_gguf("tiny-llama-q.gguf".into(), TINY_GGUF.to_vec(), None, None)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["layers"], 2);
    assert_eq!(info["base_f16"], false);
    // The tiny GGUF's vocabulary is byte-level symbols: plain lowercase text tokenizes.
    let text = "the cat sat on the mat and the dog sat on the log ".repeat(30);
    let t: serde_json::Value = serde_wasm_bindgen::from_value(
        s.add_text("a.txt".into(), text.into_bytes(), None).unwrap(),
    )
    .unwrap();
    assert!(t["tokens"].as_u64().unwrap() > 500, "{t}");
    let bad: serde_json::Value = serde_wasm_bindgen::from_value(
        s.add_text("b.bin".into(), vec![0, 159, 146, 150], None)
            .unwrap(),
    )
    .unwrap();
    assert!(bad["skipped"].as_str().unwrap().contains("binary"), "{bad}");

    let settings = serde_json::json!({"data": {"seq_len": 16}, "train": {"steps": 3, "batch_size": 2}, "lora": {"r": 2}});
    // As the page sends it: a plain object (not a JS Map).
    let settings = serde::Serialize::serialize(
        &settings,
        &serde_wasm_bindgen::Serializer::json_compatible(),
    )
    .unwrap();
    let plan: serde_json::Value =
        serde_wasm_bindgen::from_value(s.plan(settings.clone()).unwrap()).unwrap();
    // 2 layers x (q_proj: r (32 + 32) + v_proj: r (32 + 16)), r = 2.
    assert_eq!(
        plan["trainable_parameters"],
        2 * (2 * (32 + 32) + 2 * (32 + 16))
    );
    // A misspelled or mistyped setting is refused with its path, never trained with a default.
    for (bad, path) in [
        (serde_json::json!({"train": {"stpes": 3}}), "train"),
        (serde_json::json!({"lora": {"rank": 2}}), "lora"),
        (serde_json::json!({"optim": {"lr": "fast"}}), "optim.lr"),
    ] {
        let bad =
            serde::Serialize::serialize(&bad, &serde_wasm_bindgen::Serializer::json_compatible())
                .unwrap();
        let e = JsValue::from(s.plan(bad).expect_err("refused"));
        let message: String = wasm_bindgen::JsCast::unchecked_into::<js_sys::Error>(e)
            .message()
            .into();
        assert!(message.contains(path), "{path}: {message}");
    }
    s.start(settings).unwrap();
    // Step 0 (the base's validation loss, before any step), then the three steps.
    for step in 0..=3 {
        let p = wasm_bindgen_futures::JsFuture::from(s.step())
            .await
            .unwrap();
        let p: serde_json::Value = serde_wasm_bindgen::from_value(p).unwrap();
        assert_eq!(p["step"], step);
        assert_eq!(p["val_loss"].is_number(), step == 0 || step == 3, "{p}");
    }
    let adapter = wasm_bindgen_futures::JsFuture::from(s.export_adapter("f16".into()))
        .await
        .unwrap();
    let zip = js_sys::Reflect::get(&adapter, &JsValue::from_str("zip")).unwrap();
    let zip = js_sys::Uint8Array::new(&zip).to_vec();
    assert_eq!(&zip[..4], b"PK\x03\x04");
    // Errors are values with a message, not panics.
    let refused = s.add_text("c.txt".into(), b"ok".to_vec(), None);
    assert!(refused.is_ok());
    let err = s.load_gguf(
        "broken.gguf".into(),
        b"GGUF-not-really".to_vec(),
        None,
        None,
    );
    assert!(err.is_err());
}

#[wasm_bindgen_test]
async fn javascript_api_fine_tunes_a_gpt2_model() {
    // The GPT-2 family through the page's API: Hugging Face files with GPT-2's own tokenizer
    // files, LoRA on its default target (c_attn), a PEFT adapter with fan_in_fan_out; the model
    // loaded with its frozen weights in f16, as the page's "16-bit weights" loads it.
    use webtune_wasm::WebSession;
    let files: [(&str, &[u8]); 4] = [
        (
            "config.json",
            include_bytes!("../../../tests/fixtures/tiny-gpt2/config.json"),
        ),
        (
            "vocab.json",
            include_bytes!("../../../tests/fixtures/tiny-gpt2/vocab.json"),
        ),
        (
            "merges.txt",
            include_bytes!("../../../tests/fixtures/tiny-gpt2/merges.txt"),
        ),
        (
            "model.safetensors",
            include_bytes!("../../../tests/fixtures/tiny-gpt2/model.safetensors"),
        ),
    ];
    let s = WebSession::create("cpu".into()).await.unwrap();
    let names: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    let buffers = js_sys::Array::new();
    for (_, bytes) in files {
        buffers.push(&js_sys::Uint8Array::from(bytes));
    }
    let info: serde_json::Value = serde_wasm_bindgen::from_value(
        s.load_hf_files("tiny-gpt2".into(), names, buffers, Some(true), None)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["family"], "gpt2");
    // Its frozen weights kept in f16 (the CPU backend), and the run below trains on them.
    assert_eq!(info["base_f16"], true);
    assert_eq!(info["default_targets"], serde_json::json!(["c_attn"]));
    let text = "the cat sat on the mat and the dog sat on the log ".repeat(30);
    s.add_text("a.txt".into(), text.into_bytes(), None).unwrap();
    let settings = serde_json::json!({"data": {"seq_len": 16}, "train": {"steps": 2, "batch_size": 2}, "lora": {"r": 2}, "exec": {"base_f16": true}});
    let settings = serde::Serialize::serialize(
        &settings,
        &serde_wasm_bindgen::Serializer::json_compatible(),
    )
    .unwrap();
    s.start(settings).unwrap();
    let mut status = String::new();
    while status != "finished" {
        let p = wasm_bindgen_futures::JsFuture::from(s.step())
            .await
            .unwrap();
        let p: serde_json::Value = serde_wasm_bindgen::from_value(p).unwrap();
        status = p["status"].as_str().unwrap().to_string();
        assert!(status == "running" || status == "finished", "{p}");
    }
    let adapter = wasm_bindgen_futures::JsFuture::from(s.export_adapter("f32".into()))
        .await
        .unwrap();
    let config = js_sys::Reflect::get(&adapter, &JsValue::from_str("config_json"))
        .unwrap()
        .as_string()
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["fan_in_fan_out"], true);
    assert_eq!(config["target_modules"], serde_json::json!(["c_attn"]));
}
