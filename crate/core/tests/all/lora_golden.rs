//! LoRA against PEFT on the tiny random Llama and GPT-2 fixtures (`tests/fixtures/peft/`, written
//! by PEFT's `save_pretrained`): logits, loss, gradients of every A and B, one AdamW step, frozen
//! base, and the adapter files webtune writes. GPT-2's projections are `Conv1D`s, which PEFT
//! adapts with `fan_in_fan_out`.
// Native only: reads fixtures and fetched files from disk (the browser tests are in crate/wasm/tests/browser.rs).

use std::collections::BTreeMap;

use crate::common::*;
use webtune::burn::optim::GradientsParams;
use webtune::burn::tensor::{Device, Tensor};
use webtune::data::Dataset;
use webtune::formats::peft::{self, Adapter, AdapterDtype};
use webtune::model::CausalLM;
use webtune::spec::{OptimSpec, RunSpec};
use webtune::train::{Control, Trainer};

fn load_base(name: &str, device: &Device) -> CausalLM {
    load_fixture_model(name, device)
}

fn adapter(case: &str) -> Adapter {
    let dir = fixtures().join(format!("peft/{case}-adapter"));
    let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    Adapter::parse(&config, weights).unwrap()
}

fn with_adapter(case: &str, base: &str, device: &Device) -> CausalLM {
    let mut model = load_base(base, device);
    adapter(case).apply(&mut model).unwrap();
    model
}

/// [`with_adapter`], its frozen base kept in f16 when `base_f16` (and then checked to be).
fn with_adapter_on_base(case: &str, base: &str, device: &Device, base_f16: bool) -> CausalLM {
    let model = with_adapter(case, base, device);
    if !base_f16 {
        return model;
    }
    let (model, saved) = model.with_base_in_f16();
    assert!(saved > 0, "{case}: nothing was kept in f16");
    model
}

fn golden(case: &str) -> Golden {
    Golden::open(&fixtures().join(format!("peft/{case}-golden.safetensors")))
}

/// PEFT key -> (A or B param of the model, transposed to PEFT layout).
fn lora_values(model: &CausalLM) -> BTreeMap<String, Tensor<2>> {
    let mut out = BTreeMap::new();
    for (path, _, proj) in model.projections() {
        if let Some(l) = &proj.lora {
            out.insert(
                format!("base_model.model.{path}.lora_A.weight"),
                l.a.val().transpose(),
            );
            out.insert(
                format!("base_model.model.{path}.lora_B.weight"),
                l.b.val().transpose(),
            );
        }
    }
    out
}

fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    max_abs_diff(got, want) / scale
}

/// How far webtune may be from PEFT / torch autograd in f32: the logits (absolute), the loss and
/// the gradients of A and B (relative).
#[derive(Clone, Copy)]
struct Tolerances {
    logits: f32,
    loss: f32,
    gradients: f32,
}

/// f32 against f32: only the order of the sums differs.
const F32: Tolerances = Tolerances {
    logits: 1e-4,
    loss: 1e-3,
    gradients: 1e-3,
};

/// A base kept in f16 (`CausalLM::with_base_in_f16`) on the CPU backend, against PEFT in f32: each
/// weight rounded to f16 moves by up to 2^-11 of itself. Measured on these fixtures: logits
/// within 4.8e-3 (absolute, of logits up to 4.9 in size), the loss within 3.6e-5 and the gradients of A
/// and B within 4.3e-3 (relative); asserted with about 2x margin.
const F16_CPU: Tolerances = Tolerances {
    logits: 1e-2,
    loss: 1e-4,
    gradients: 1e-2,
};

fn logits_match_peft(case: &str, base: &str) {
    let device = webtune::device::cpu();
    logits_match_peft_on(&device, case, base, false, F32);
    logits_match_peft_on(&device, case, base, true, F16_CPU);
}

fn logits_match_peft_on(device: &Device, case: &str, base: &str, base_f16: bool, tol: Tolerances) {
    let model = with_adapter_on_base(case, base, device, base_f16);
    let g = golden(case);
    let (shape, ids) = g.i64("input_ids");
    let (_, want) = g.f32("logits");
    let got = to_vec(model.forward(ids_tensor(&shape, &ids, device), None));
    let diff = max_abs_diff(&got, &want);
    println!("{case} (base in f16: {base_f16}): logits max abs diff {diff:e}");
    assert!(
        diff < tol.logits,
        "{case} (base in f16: {base_f16}): logits differ from PEFT by {diff}"
    );
}

#[test]
fn qv_adapter_logits_match_peft() {
    logits_match_peft("qv", "tiny-llama-untied");
}

#[test]
fn all_linear_rslora_adapter_logits_match_peft() {
    logits_match_peft("all_rslora", "tiny-llama-tied");
}

fn gradients_match_torch(case: &str, base: &str) {
    let device = webtune::device::cpu().autodiff();
    // Both training paths: every activation kept for the backward pass, and each layer's
    // recomputed in it (exec.recompute).
    for recompute in [false, true] {
        gradients_match_torch_on(&device, case, base, recompute, false, F32);
    }
    // And with the base kept in f16, within its own tolerances.
    gradients_match_torch_on(&device, case, base, false, true, F16_CPU);
}

/// `device` with autodiff.
fn gradients_match_torch_on(
    device: &Device,
    case: &str,
    base: &str,
    recompute: bool,
    base_f16: bool,
    tol: Tolerances,
) {
    let model = with_adapter_on_base(case, base, device, base_f16);
    let g = golden(case);
    let (loss, grads) = golden_loss_and_gradients(&model, &g, device, recompute);
    let (_, want_loss) = g.f32("loss");
    let got_loss = loss.into_scalar::<f32>();
    println!(
        "{case} (recompute: {recompute}, base in f16: {base_f16}): loss webtune {got_loss} torch {}",
        want_loss[0]
    );
    assert!(((got_loss - want_loss[0]) / want_loss[0]).abs() < tol.loss);

    let lora = lora_values(&model);
    // Only A and B get gradients: the base is frozen.
    assert_eq!(
        grads.len(),
        lora.len(),
        "gradients exist for non-LoRA parameters (recompute: {recompute})"
    );
    for (path, _, proj) in model.projections() {
        let Some(l) = &proj.lora else { continue };
        for (which, id) in [("lora_A", l.a.id), ("lora_B", l.b.id)] {
            let key = format!("base_model.model.{path}.{which}.weight");
            let got = grads.get::<2>(id).expect("a LoRA gradient").transpose();
            let (want_shape, want) = g.f32(&format!("grad.{key}"));
            assert_eq!(got.dims().to_vec(), want_shape, "{key}");
            let d = rel_diff(&to_vec(got), &want);
            if base_f16 {
                println!("{case} (base in f16): gradient of {key} differs by {d:e} (relative)");
            }
            assert!(
                d < tol.gradients,
                "{case} (recompute: {recompute}, base in f16: {base_f16}): gradient of {key} \
                 differs by {d} (relative)"
            );
        }
    }
}

/// Every float parameter back in f32, by burn's own cast: the reference for a base kept in f16.
struct AllF32;

impl webtune::burn::module::ModuleMapper for AllF32 {
    fn map_float<const D: usize>(
        &mut self,
        param: webtune::burn::module::Param<Tensor<D>>,
    ) -> webtune::burn::module::Param<Tensor<D>> {
        param.map(|t| t.cast(webtune::burn::tensor::FloatDType::F32))
    }
}

/// A base kept in f16 computes, in f32, what the f32 model computes from the same rounded
/// weights: the widening products (and the LM head's chunks) change nothing but the storage.
#[test]
fn a_base_in_f16_computes_what_f32_computes_from_the_rounded_weights() {
    use webtune::burn::module::Module;
    for (case, base) in [
        ("all_rslora", "tiny-llama-tied"),
        ("qv", "tiny-llama-untied"),
        ("gpt2_all", "tiny-gpt2"),
    ] {
        let device = webtune::device::cpu().autodiff();
        let (half, _) = with_adapter(case, base, &device).with_base_in_f16();
        let rounded = half.clone().map(&mut AllF32);
        let g = golden(case);
        let (shape, ids) = g.i64("input_ids");
        let windows = golden_windows(&g);
        let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let run = |model: &CausalLM| {
            let (inputs, targets) = webtune::train::batch_tensors(&refs, &device);
            let logits = to_vec(model.forward(inputs.clone(), None));
            let loss = model.loss(inputs, targets);
            let grads = GradientsParams::from_grads(loss.clone().backward(), model);
            let mut all = vec![loss.into_scalar::<f32>()];
            for (_, _, proj) in model.projections() {
                if let Some(l) = &proj.lora {
                    for id in [l.a.id, l.b.id] {
                        all.extend(to_vec(grads.get::<2>(id).expect("a LoRA gradient")));
                    }
                }
            }
            (logits, all)
        };
        let (logits_half, grads_half) = run(&half);
        let (logits_rounded, grads_rounded) = run(&rounded);
        let dl = rel_diff(&logits_half, &logits_rounded);
        let dg = rel_diff(&grads_half, &grads_rounded);
        println!("{case}: f16 base against rounded f32: logits {dl:e}, loss and gradients {dg:e}");
        assert!(
            dl < 1e-5 && dg < 1e-5,
            "{case}: logits {dl}, gradients {dg}"
        );
        assert_ne!(
            logits_half,
            to_vec(
                with_adapter(case, base, &webtune::device::cpu())
                    .forward(ids_tensor(&shape, &ids, &webtune::device::cpu()), None)
            ),
            "{case}: the rounded weights change nothing: is the base in f16 at all?"
        );

        // A few rows (a prompt's, a generated token's) take the f16 weights as they are stored
        // (`cpu::f16_few_rows`) instead of widening them: the same logits, and the same greedy
        // continuation with the KV cache (one row a token).
        let prompt: Vec<u32> = windows[0][..5].to_vec();
        let few = |model: &CausalLM| {
            let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
            to_vec(model.forward(ids_tensor(&[1, ids.len()], &ids, &device), None))
        };
        let d = rel_diff(&few(&half), &few(&rounded));
        assert!(d < 1e-5, "{case}: a prompt's logits {d}");
        let greedy = |model: &CausalLM| {
            let cfg = webtune::generate::SamplingConfig::greedy(12);
            webtune::generate::generate_blocking(model, &prompt, &cfg, &[], |_| true).unwrap()
        };
        assert_eq!(greedy(&half), greedy(&rounded), "{case}: greedy tokens");
    }
}

/// `--base-f16` converts each matrix as the loader reads it (so the f32 model never exists
/// whole): the same model as the loaded f32 one converted afterwards.
#[test]
fn a_base_loaded_in_f16_is_the_loaded_base_converted() {
    use webtune::model::ModelConfig;
    for base in ["tiny-llama-tied", "tiny-gpt2"] {
        let device = webtune::device::cpu();
        let dir = fixtures().join(base);
        let config_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let config = ModelConfig::from_json("config.json", &config_text).unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let ckpt = webtune::formats::safetensors::SafetensorsCheckpoint::single(
            "model.safetensors",
            bytes,
        )
        .unwrap();
        let loaded = config.load_with(&ckpt, &device, true).unwrap();
        assert!(loaded.base_in_f16(), "{base}: loaded in f32");
        let converted = load_base(base, &device).with_base_in_f16().0;
        let ids = ids_tensor(&[2, 5], &[1, 5, 9, 2, 7, 3, 3, 8, 0, 4], &device);
        assert_eq!(
            to_vec(loaded.forward(ids.clone(), None)),
            to_vec(converted.forward(ids, None)),
            "{base}"
        );
    }
}

#[test]
fn qv_loss_and_gradients_match_torch_autograd() {
    gradients_match_torch("qv", "tiny-llama-untied");
}

#[test]
fn all_linear_rslora_gradients_match_torch_autograd() {
    gradients_match_torch("all_rslora", "tiny-llama-tied");
}

/// Every frozen tensor's values, to check that training leaves them bit-identical.
fn base_snapshot(model: &CausalLM) -> Vec<Vec<f32>> {
    // Every weight under its HF name: embeddings, norms, projections' bases, the head.
    model
        .hf_tensors()
        .into_iter()
        .map(|(_, _, t)| to_vec(t))
        .collect()
}

fn one_adamw_step_matches_torch(case: &str, base: &str) {
    let device = webtune::device::cpu().autodiff();
    let model = with_adapter(case, base, &device);
    let before = base_snapshot(&model);
    let g = golden(case);
    let (shape, ids) = g.i64("input_ids");
    let windows: Vec<Vec<u32>> = ids
        .chunks(shape[1])
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect();
    let data = Dataset {
        seq_len: shape[1] - 1,
        train: windows,
        val: Vec::new(),
        val_documents: Vec::new(),
        examples: Default::default(),
        val_prompts: Vec::new(),
    };
    // torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), no clipping,
    // constant learning rate.
    let mut spec = RunSpec::default();
    spec.data.seq_len = shape[1] - 1;
    spec.train.steps = 1;
    spec.train.batch_size = 2;
    spec.train.eval_every = 0;
    spec.optim = OptimSpec {
        lr: 1e-2,
        warmup_steps: Some(0),
        min_lr_ratio: 1.0,
        weight_decay: 0.01,
        max_grad_norm: None,
        ..OptimSpec::default()
    };
    let mut trainer = Trainer::new(model, data, spec).unwrap();
    trainer.run_blocking(|_| Control::Continue).unwrap();
    let model = trainer.into_model();
    for (key, value) in lora_values(&model) {
        let (_, want) = g.f32(&format!("after.{key}"));
        let d = max_abs_diff(&to_vec(value), &want);
        assert!(
            d < 1e-4,
            "{case}: {key} after one AdamW step differs by {d}"
        );
    }
    assert!(before == base_snapshot(&model), "a frozen weight changed");
}

#[test]
fn qv_one_adamw_step_matches_torch_and_base_stays_frozen() {
    one_adamw_step_matches_torch("qv", "tiny-llama-untied");
}

#[test]
fn all_linear_one_adamw_step_matches_torch() {
    one_adamw_step_matches_torch("all_rslora", "tiny-llama-tied");
}

#[test]
fn gpt2_attention_adapter_logits_match_peft() {
    logits_match_peft("gpt2_attn", "tiny-gpt2");
}

#[test]
fn gpt2_all_projections_rslora_logits_match_peft() {
    logits_match_peft("gpt2_all", "tiny-gpt2");
}

#[test]
fn gpt2_loss_and_gradients_match_torch_autograd() {
    gradients_match_torch("gpt2_attn", "tiny-gpt2");
    gradients_match_torch("gpt2_all", "tiny-gpt2");
}

#[test]
fn gpt2_one_adamw_step_matches_torch_and_base_stays_frozen() {
    one_adamw_step_matches_torch("gpt2_all", "tiny-gpt2");
}

#[test]
fn exported_adapter_has_exactly_what_peft_writes() {
    exported_adapter_matches_peft("qv", "tiny-llama-untied");
}

#[test]
fn exported_gpt2_adapter_has_exactly_what_peft_writes() {
    // fan_in_fan_out: true, c_attn / c_proj / c_fc, PEFT's key names and shapes.
    exported_adapter_matches_peft("gpt2_attn", "tiny-gpt2");
    exported_adapter_matches_peft("gpt2_all", "tiny-gpt2");
}

#[test]
fn a_fresh_gpt2_adapter_has_peft_keys_shapes_and_config() {
    // LoRA attached by webtune (not read from PEFT's file), with the settings of PEFT's case.
    let device = webtune::device::cpu();
    let mut model = load_base("tiny-gpt2", &device);
    let cfg = webtune::lora::LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
        use_rslora: true,
        ..Default::default()
    };
    webtune::lora::attach(&mut model, &cfg, 1).unwrap();
    let files = pollster::block_on(peft::export(&model, "tiny-gpt2", AdapterDtype::F32)).unwrap();
    let dir = fixtures().join("peft/gpt2_all-adapter");
    let peft_bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&peft_bytes).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&files.safetensors).unwrap();
    let shapes = |st: &safetensors::SafeTensors| {
        let mut v: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, t.shape().to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&ours), shapes(&theirs));
    let ours: serde_json::Value = serde_json::from_str(&files.config_json).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    same_config(&ours, &theirs);
}

/// `adapter_config.json`: the same fields, and the same values for what defines the adapter.
fn same_config(ours: &serde_json::Value, theirs: &serde_json::Value) {
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(ours),
        keys(theirs),
        "adapter_config.json fields differ"
    );
    for field in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "use_rslora",
        "fan_in_fan_out",
        "bias",
        "use_dora",
        "base_model_name_or_path",
    ] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    let mut t1: Vec<String> = serde_json::from_value(ours["target_modules"].clone()).unwrap();
    let mut t2: Vec<String> = serde_json::from_value(theirs["target_modules"].clone()).unwrap();
    t1.sort();
    t2.sort();
    assert_eq!(t1, t2);
}

fn exported_adapter_matches_peft(case: &str, base: &str) {
    let device = webtune::device::cpu();
    let model = with_adapter(case, base, &device);
    let files = pollster::block_on(peft::export(&model, base, AdapterDtype::F32)).unwrap();

    // Weights: same keys, shapes, dtypes, header metadata and values as PEFT's file.
    let peft_dir = fixtures().join(format!("peft/{case}-adapter"));
    let peft_bytes = std::fs::read(peft_dir.join("adapter_model.safetensors")).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&peft_bytes).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&files.safetensors).unwrap();
    let mut their_keys = theirs.names();
    let mut our_keys = ours.names();
    their_keys.sort_unstable();
    our_keys.sort_unstable();
    assert_eq!(our_keys, their_keys);
    for k in their_keys {
        let (a, b) = (ours.tensor(k).unwrap(), theirs.tensor(k).unwrap());
        assert_eq!(a.shape(), b.shape(), "{k}");
        assert_eq!(a.dtype(), b.dtype(), "{k}");
        assert_eq!(a.data(), b.data(), "{k}: values differ");
    }
    let (_, our_meta) = safetensors::SafeTensors::read_metadata(&files.safetensors).unwrap();
    let (_, their_meta) = safetensors::SafeTensors::read_metadata(&peft_bytes).unwrap();
    assert_eq!(our_meta.metadata(), their_meta.metadata());

    let ours: serde_json::Value = serde_json::from_str(&files.config_json).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(peft_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    same_config(&ours, &theirs);
}

#[test]
fn adapters_for_another_base_are_refused() {
    let device = webtune::device::cpu();
    // The all-linear adapter was made for the tied model (head_dim 8): q_proj there is 32 -> 32,
    // on the untied model (head_dim 12) it is 32 -> 48.
    let mut model = load_base("tiny-llama-untied", &device);
    let err = adapter("all_rslora")
        .apply(&mut model)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("does not fit"),
        "{err}"
    );

    // A config that says another rank than the tensors have.
    let dir = fixtures().join("peft/qv-adapter");
    let config = std::fs::read_to_string(dir.join("adapter_config.json"))
        .unwrap()
        .replace("\"r\": 4", "\"r\": 16");
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let err = Adapter::parse(&config, weights)
        .unwrap()
        .apply(&mut model)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 16"), "{err}");
}

/// The same checks on a GPU through wgpu (`--features gpu`; natively Vulkan, Metal or DX12; in
/// CI Mesa's lavapipe, Vulkan computed on the CPU, which has `shaderFloat16` like most GPUs'
/// WebGPU `shader-f16`): the composed ops (no fused CPU kernels) in f32, and the base kept in
/// f16 with its products computed in f16.
#[cfg(feature = "gpu")]
mod gpu {
    use super::*;

    fn gpu() -> Device {
        match webtune::device::gpu() {
            Ok(device) => device,
            Err(e) => panic!("{e} (tests/setup.sh installs Mesa's lavapipe for these tests)"),
        }
    }

    /// The bench names the adapter it ran on (`tests/bench/gpu.sh` skips SmolLM2 on a CPU
    /// rasterizer by it): once the GPU is started, wgpu's name, backend and device type.
    #[test]
    fn the_started_gpu_names_its_adapter() {
        gpu();
        let name = webtune::device::gpu_adapter().expect("the GPU started");
        assert!(
            name.contains("Vulkan") && name.contains(", driver "),
            "adapter described as {name:?}"
        );
    }

    const CASES: [(&str, &str); 3] = [
        ("qv", "tiny-llama-untied"),
        ("all_rslora", "tiny-llama-tied"),
        ("gpt2_all", "tiny-gpt2"),
    ];

    /// The base kept in f16 on a GPU, against PEFT in f32: the weights rounded as on the CPU, and
    /// each frozen product's input and output rounded to f16 too (its sums in f32). Measured on
    /// these fixtures (lavapipe): logits within 7.0e-3 (absolute), the loss within 2.6e-5 and the
    /// gradients of A and B within 6.9e-3 (relative), against 4.8e-3, 3.6e-5 and 4.3e-3 for the
    /// CPU's f32 products of the rounded weights; asserted with about 2x margin.
    const F16_GPU: Tolerances = Tolerances {
        logits: 1.5e-2,
        loss: 1e-4,
        gradients: 1.5e-2,
    };

    /// An f16 product's backward pass keeps the gradients a mean loss over many tokens gives,
    /// most of them below f16's smallest normal value (6.1e-5) and many below its smallest
    /// value (6e-8): x's gradient within 2e-3 of the f32 product's with the same rounded weights
    /// (relative L2; measured 2.1e-4, and 2.4e-2 without `F16_GRADIENT_SCALE`, whose need
    /// SmolLM2's LoRA gradients showed first: 15% from the f32 run's; README, "Speed").
    #[test]
    fn f16_products_keep_the_small_gradients_of_a_mean_loss() {
        use webtune::burn::tensor::{FloatDType, TensorData};
        let device = gpu().autodiff();
        let (rows, k, n) = (64, 96, 4096);
        // Deterministic values in [0, 1).
        let u = |i: usize, salt: usize| {
            ((i * 2_654_435_761 + salt * 40_503) % 1_000_003) as f32 / 1_000_003.0
        };
        let tensor = |v: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v, shape), &device)
        };
        let w = tensor((0..k * n).map(|i| u(i, 1) * 0.1 - 0.05).collect(), [k, n])
            .cast(FloatDType::F16);
        let x: Vec<f32> = (0..rows * k).map(|i| u(i, 2) * 4.0 - 2.0).collect();
        // The upstream gradient: 1e-10 to 1e-6, like the tail of a softmax over a large
        // vocabulary divided by a 512-token batch.
        let dy = tensor(
            (0..rows * n)
                .map(|i| 10f32.powf(-10.0 + 4.0 * u(i, 3)))
                .collect(),
            [rows, n],
        );
        let gradient = |product: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = tensor(x.clone(), [rows, k]).require_grad();
            let grads = (product(x.clone()) * dy.clone()).sum().backward();
            to_vec(x.grad(&grads).expect("x gets a gradient"))
        };
        let products = webtune::kernels::FrozenProducts::platform();
        let half = gradient(&|x| webtune::kernels::frozen_matmul(x, w.clone(), products));
        let full = gradient(&|x| x.matmul(w.clone().cast(FloatDType::F32)));
        let d = rel_l2(&half, &full);
        println!("x's gradient, f16 product against f32: {d:e} apart (relative L2)");
        assert!(
            d < 2e-3,
            "x's gradient through the f16 product is {d} from the f32 one's"
        );
    }

    #[test]
    fn logits_match_peft_on_the_gpu() {
        let device = gpu();
        for (case, base) in CASES {
            logits_match_peft_on(&device, case, base, false, F32);
        }
    }

    #[test]
    fn loss_and_gradients_match_torch_on_the_gpu() {
        let device = gpu().autodiff();
        for (case, base) in CASES {
            for recompute in [false, true] {
                gradients_match_torch_on(&device, case, base, recompute, false, F32);
            }
        }
    }

    #[test]
    fn a_base_in_f16_on_the_gpu_matches_peft_within_its_tolerance() {
        let device = gpu();
        assert!(
            webtune::device::holds_f16(&device),
            "this GPU's shaders take no f16: the f16 base cannot be tested on it"
        );
        for (case, base) in CASES {
            logits_match_peft_on(&device, case, base, true, F16_GPU);
            for recompute in [false, true] {
                gradients_match_torch_on(
                    &device.clone().autodiff(),
                    case,
                    base,
                    recompute,
                    true,
                    F16_GPU,
                );
            }
        }
    }
}
