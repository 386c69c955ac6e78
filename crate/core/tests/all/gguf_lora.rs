//! The GGUF LoRA adapter for llama.cpp, checked against the rules of llama.cpp's
//! `convert_lora_to_gguf.py` and of its adapter loader (`llama-adapter.cpp`), and read back
//! through webtune's own GGUF reader.
// Native only: reads fixtures from disk (the browser tests are in crate/wasm/tests/browser.rs).

use crate::common::*;
use webtune::burn::module::Param;
use webtune::burn::tensor::{Distribution, Tensor};
use webtune::formats::gguf::{GgufFile, Value};
use webtune::formats::gguf_lora;
use webtune::formats::peft::{self, AdapterDtype};
use webtune::lora::{self, LoraConfig};
use webtune::model::{LlamaConfig, ModelConfig};

/// The tiny untied model (4 query heads, 2 key/value heads, head_dim 12) with LoRA on every
/// projection and random B (B = 0 would hide any row permutation).
fn adapted(cfg: &LoraConfig) -> (webtune::CausalLM, ModelConfig, LlamaConfig) {
    let device = webtune::device::cpu();
    let text = std::fs::read_to_string(fixtures().join("tiny-llama-untied/config.json")).unwrap();
    let config = ModelConfig::from_json("config.json", &text).unwrap();
    let llama = LlamaConfig::from_json("config.json", &text).unwrap();
    let mut model = load_fixture_model("tiny-llama-untied", &device);
    lora::attach(&mut model, cfg, 0).unwrap();
    for (_, _, proj) in model.projections_mut() {
        let Some(branch) = proj.lora.as_mut() else {
            continue;
        };
        let dims = branch.b.val().dims();
        branch.b = Param::from_tensor(Tensor::random(
            dims,
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
    }
    (model, config, llama)
}

/// llama.cpp's q/k row permutation, written out from `LlamaModel.permute` in
/// `convert_hf_to_gguf.py`: `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)`.
fn llama_cpp_permute(rows: &[Vec<f32>], n_head: usize) -> Vec<Vec<f32>> {
    let half = rows.len() / n_head / 2;
    let mut out = Vec::new();
    for h in 0..n_head {
        for j in 0..half {
            for s in 0..2 {
                out.push(rows[(h * 2 + s) * half + j].clone());
            }
        }
    }
    out
}

fn rows(data: &[f32], cols: usize) -> Vec<Vec<f32>> {
    data.chunks(cols).map(<[f32]>::to_vec).collect()
}

/// HF module -> llama.cpp tensor (llama.cpp's `tensor_mapping.py`), spelled out here so the
/// test does not trust the exporter's own table.
const LLAMA_CPP_NAMES: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

#[test]
fn gguf_lora_follows_llama_cpps_converter() {
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        targets: vec!["all-linear".into()],
        ..LoraConfig::default()
    };
    let (model, config, llama) = adapted(&cfg);
    let bytes = pollster::block_on(gguf_lora::export(
        &model,
        &config,
        "tiny",
        AdapterDtype::F32,
    ))
    .unwrap();
    // It reads back through our own reader.
    let g = GgufFile::parse("adapter.gguf", bytes).unwrap();

    // The metadata llama.cpp's loader requires: general.type "adapter", adapter.type "lora"
    // (else "expect general.type to be 'adapter'"), the base's architecture, and alpha as f32
    // (convert_lora_to_gguf: add_float32(adapter.lora.alpha)).
    assert_eq!(
        g.get("general.type"),
        Some(&Value::String("adapter".into()))
    );
    assert_eq!(g.get("adapter.type"), Some(&Value::String("lora".into())));
    assert_eq!(
        g.get("general.architecture"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(g.get("adapter.lora.alpha"), Some(&Value::F32(8.0)));

    // One `.lora_a` and one `.lora_b` per adapted projection, under llama.cpp's names.
    let peft = pollster::block_on(peft::lora_tensors(&model)).unwrap();
    assert_eq!(g.tensors.len(), peft.len());
    for layer in 0..llama.num_hidden_layers {
        for (hf, cpp) in LLAMA_CPP_NAMES {
            let key = format!("base_model.model.model.layers.{layer}.{hf}");
            let get = |suffix: &str| {
                peft.iter()
                    .find(|(k, _)| *k == format!("{key}.{suffix}.weight"))
                    .map(|(_, t)| t.clone())
                    .unwrap()
            };
            let (a, b) = (get("lora_A"), get("lora_B"));
            let name = format!("blk.{layer}.{cpp}.weight");
            let ga = g.dequantize(&format!("{name}.lora_a")).unwrap();
            let gb = g.dequantize(&format!("{name}.lora_b")).unwrap();
            // lora_a is PEFT's A, [r, d_in]: GGUF ne = [d_in, r], so ne[0] is the base weight's
            // ne[0] (llama-adapter.cpp checks "tensor has incorrect shape" on exactly this).
            assert_eq!(ga.shape, a.shape, "{name}.lora_a");
            assert_eq!(ga.data, a.data, "{name}.lora_a");
            // lora_b is PEFT's B, [d_out, r]: a.ne[1] == b.ne[0] is the rank.
            assert_eq!(gb.shape, b.shape, "{name}.lora_b");
            assert_eq!(ga.shape[0], gb.shape[1], "{name}: ranks of a and b");
            // q/k: B's rows in llama.cpp's order, as the base q/k rows are stored; else as is.
            let heads = match cpp {
                "attn_q" => Some(llama.num_attention_heads),
                "attn_k" => Some(llama.num_key_value_heads()),
                _ => None,
            };
            let want = match heads {
                Some(n) => llama_cpp_permute(&rows(&b.data, b.shape[1]), n).concat(),
                None => b.data.clone(),
            };
            assert_eq!(gb.data, want, "{name}.lora_b rows");
        }
    }

    // F16 holds the same values to f16 precision.
    let bytes = pollster::block_on(gguf_lora::export(
        &model,
        &config,
        "tiny",
        AdapterDtype::F16,
    ))
    .unwrap();
    let g16 = GgufFile::parse("adapter-f16.gguf", bytes).unwrap();
    let a32 = g.dequantize("blk.1.ffn_down.weight.lora_a").unwrap();
    let a16 = g16.dequantize("blk.1.ffn_down.weight.lora_a").unwrap();
    assert!(max_abs_diff(&a32.data, &a16.data) < 1e-3);
}

#[test]
fn gguf_lora_alpha_keeps_the_rslora_scale() {
    // llama.cpp scales by alpha / r; rsLoRA trained with alpha / sqrt(r).
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        use_rslora: true,
        ..LoraConfig::default()
    };
    let (model, config, llama) = adapted(&cfg);
    let bytes = pollster::block_on(gguf_lora::export(
        &model,
        &config,
        "tiny",
        AdapterDtype::F32,
    ))
    .unwrap();
    let g = GgufFile::parse("adapter.gguf", bytes).unwrap();
    let alpha = g.get("adapter.lora.alpha").and_then(Value::as_f64).unwrap();
    assert!((alpha / 4.0 - 8.0 / 2.0).abs() < 1e-6, "alpha {alpha}");
    // Only the targeted projections (q_proj, v_proj by default) are in the file.
    assert_eq!(g.tensors.len(), 2 * 2 * llama.num_hidden_layers);
}

#[test]
fn gpt2_adapter_uses_llama_cpp_gpt2_names_and_plain_rows() {
    // llama.cpp's gpt2 tensors: attn_qkv (c_attn), attn_output (attn.c_proj), ffn_up (c_fc),
    // ffn_down (mlp.c_proj); no rotary permutation, so A and B are PEFT's as they are.
    let device = webtune::device::cpu();
    let bytes = std::fs::read(fixtures().join("tiny-gpt2-q.gguf")).unwrap();
    let mut base = webtune::BaseModel::from_gguf("tiny-gpt2-q.gguf", bytes, &device).unwrap();
    let cfg = LoraConfig {
        r: 2,
        targets: vec!["all-linear".into()],
        ..LoraConfig::default()
    };
    lora::attach(&mut base.model, &cfg, 0).unwrap();
    let bytes = pollster::block_on(gguf_lora::export(
        &base.model,
        &base.config,
        "tiny-gpt2",
        AdapterDtype::F32,
    ))
    .unwrap();
    let g = GgufFile::parse("adapter.gguf", bytes).unwrap();
    assert_eq!(
        g.get("general.architecture"),
        Some(&Value::String("gpt2".into()))
    );
    let peft = pollster::block_on(peft::lora_tensors(&base.model)).unwrap();
    assert_eq!(g.tensors.len(), peft.len());
    for (hf, cpp) in [
        ("attn.c_attn", "attn_qkv"),
        ("attn.c_proj", "attn_output"),
        ("mlp.c_fc", "ffn_up"),
        ("mlp.c_proj", "ffn_down"),
    ] {
        for (peft_ab, cpp_ab) in [("lora_A", "lora_a"), ("lora_B", "lora_b")] {
            let key = format!("base_model.model.transformer.h.1.{hf}.{peft_ab}.weight");
            let want = &peft.iter().find(|(k, _)| *k == key).unwrap().1;
            let got = g
                .dequantize(&format!("blk.1.{cpp}.weight.{cpp_ab}"))
                .unwrap();
            assert_eq!((&got.shape, &got.data), (&want.shape, &want.data), "{key}");
        }
    }
}
