//! The frozen base's products in 16-bit integers (`kernels::FrozenProducts::Int16`, the page's
//! way in wasm with "16-bit weights") against PEFT / torch autograd in f32, on the tiny fixtures:
//! logits, loss, the gradients of every A and B, with every activation kept and with each layer
//! recomputed. Natively these run the kernel's portable path, which computes what its wasm SIMD
//! path does to the bit (the same exact integer sums, the same f32 operations per block).
//! Each model carries its choice (`CausalLM::with_products`): both ways run side by side.

use crate::common::*;
use webtune::burn::tensor::Device;
use webtune::formats::peft::Adapter;
use webtune::kernels::FrozenProducts;
use webtune::model::CausalLM;

/// The fixtures' adapters and their bases: Llama with its head tied and untied, GPT-2.
const CASES: [(&str, &str); 3] = [
    ("qv", "tiny-llama-untied"),
    ("all_rslora", "tiny-llama-tied"),
    ("gpt2_all", "tiny-gpt2"),
];

/// How far the int16 products may be from PEFT in f32 (logits absolute, of logits up to ~5;
/// loss and gradients relative). Measured on these fixtures: logits within 6.0e-3, the loss
/// within 3.7e-5, the gradients within 4.7e-3: about what the f16 base alone gives (its rounding,
/// 2^-11, is the larger error; the integers' is 2^-14 of each block's largest value). Asserted
/// with about 2x margin, as the f16 base's tolerances in lora_golden.rs.
const LOGITS: f32 = 1e-2;
const LOSS: f32 = 1e-4;
const GRADIENTS: f32 = 1e-2;

/// The case's adapter on its base, the base's matrices kept in f16, its products as `products`.
fn model(case: &str, base: &str, device: &Device, products: FrozenProducts) -> CausalLM {
    let mut model = load_fixture_model(base, device);
    let dir = fixtures().join(format!("peft/{case}-adapter"));
    let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    Adapter::parse(&config, weights)
        .unwrap()
        .apply(&mut model)
        .unwrap();
    let (model, saved) = model.with_base_in_f16();
    assert!(saved > 0, "{case}: nothing was kept in f16");
    model.with_products(products)
}

fn golden(case: &str) -> Golden {
    Golden::open(&fixtures().join(format!("peft/{case}-golden.safetensors")))
}

fn logits(case: &str, base: &str, products: FrozenProducts) -> Vec<f32> {
    let device = webtune::device::cpu();
    let g = golden(case);
    let (shape, ids) = g.i64("input_ids");
    let model = model(case, base, &device, products);
    to_vec(model.forward(ids_tensor(&shape, &ids, &device), None))
}

#[test]
fn logits_match_peft() {
    for (case, base) in CASES {
        let widened = logits(case, base, FrozenProducts::Widened);
        let got = logits(case, base, FrozenProducts::Int16);
        // The products ran in integers at all: the f16 base's widened products differ.
        assert_ne!(got, widened, "{case}: the int16 products did not run");
        let (_, want) = golden(case).f32("logits");
        let diff = max_abs_diff(&got, &want);
        println!("{case}: int16 logits max abs diff {diff:e}");
        assert!(diff < LOGITS, "{case}: logits differ from PEFT by {diff}");
    }
}

/// The loss and every LoRA gradient (PEFT's key, values in PEFT's layout) on training's path
/// (the head fused with the loss), with every activation kept or each layer recomputed.
fn loss_and_gradients(
    case: &str,
    base: &str,
    recompute: bool,
    products: FrozenProducts,
) -> (f32, Vec<(String, Vec<f32>)>) {
    let device = webtune::device::cpu().autodiff();
    let model = model(case, base, &device, products);
    let (loss, grads) = golden_loss_and_gradients(&model, &golden(case), &device, recompute);
    let mut out = Vec::new();
    for (path, _, proj) in model.projections() {
        let Some(l) = &proj.lora else { continue };
        for (which, id) in [("lora_A", l.a.id), ("lora_B", l.b.id)] {
            let key = format!("base_model.model.{path}.{which}.weight");
            let g = grads.get::<2>(id).expect("a LoRA gradient").transpose();
            out.push((key, to_vec(g)));
        }
    }
    (loss.into_scalar::<f32>(), out)
}

#[test]
fn loss_and_gradients_match_torch_autograd() {
    for (case, base) in CASES {
        let (_, widened) = loss_and_gradients(case, base, false, FrozenProducts::Widened);
        for recompute in [false, true] {
            let (loss, grads) = loss_and_gradients(case, base, recompute, FrozenProducts::Int16);
            assert_ne!(grads, widened, "{case}: the int16 products did not run");
            let g = golden(case);
            let (_, want) = g.f32("loss");
            let d = ((loss - want[0]) / want[0]).abs();
            println!(
                "{case} (recompute: {recompute}): int16 loss {loss} torch {} ({d:e})",
                want[0]
            );
            assert!(d < LOSS, "{case}: loss {loss} against {}", want[0]);
            assert!(!grads.is_empty(), "{case}: no LoRA gradients");
            for (key, got) in grads {
                let (_, want) = g.f32(&format!("grad.{key}"));
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
                let d = max_abs_diff(&got, &want) / scale;
                println!("{case} (recompute: {recompute}): int16 gradient of {key}: {d:e}");
                assert!(d < GRADIENTS, "{case}: gradient of {key} differs by {d}");
            }
        }
    }
}
