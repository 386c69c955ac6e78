//! What a model and a run need in memory: known from a GGUF file's header or a config.json
//! before the model is loaded, and a run over the session's limit refused with what would fit.

use webtune::BaseModel;
use webtune::error::Error;
use webtune::formats::gguf::GgufFile;
use webtune::memory::{MemoryLimits, ModelShape};
use webtune::session::Session;
use webtune::spec::RunSpec;

use crate::common::fixtures;

#[test]
fn a_gguf_header_gives_the_model_shape_before_the_file_is_read() {
    for name in ["tiny-llama-q.gguf", "tiny-qwen2.gguf", "tiny-gpt2-q.gguf"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let len = bytes.len() as u64;
        let full = GgufFile::parse(name, bytes.clone()).unwrap();
        let loaded = BaseModel::from_gguf(name, bytes.clone(), &webtune::device::cpu()).unwrap();
        // The header ends where the first tensor's data starts.
        let data_start = full.tensors.iter().map(|t| t.offset).min().unwrap() as usize;
        let head = bytes[..data_start].to_vec();
        let shape = ModelShape::from_gguf_head(name, head.clone(), len).unwrap();
        assert_eq!(shape, ModelShape::of(&loaded.config), "{name}");
        assert!(shape.parameters > 0 && shape.layers > 0 && shape.intermediate > 0);

        // A header-only file has no tensor data to read: an error, not a panic.
        let header = GgufFile::parse_header(name, head, len).unwrap();
        let tensor = &header.tensors[0].name;
        let e = header.dequantize(tensor).unwrap_err().to_string();
        assert!(
            e.contains(name) && e.contains("only the file's header"),
            "{e}"
        );

        // Too few bytes for the header: the error says how many it needs.
        match ModelShape::from_gguf_head(name, bytes[..data_start / 2].to_vec(), len) {
            Err(Error::Truncated { file, needed, .. }) => {
                assert_eq!(file, name);
                assert!(needed as usize > data_start / 2);
            }
            other => panic!("{name}: {other:?}"),
        }
        // Counts are checked against the file's length, not the bytes given: a file claimed
        // shorter than its header is corrupt.
        let e = GgufFile::parse_header(name, bytes[..64].to_vec(), 40).unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[test]
fn a_config_json_gives_the_model_shape() {
    // Parameters as the weights file holds them (the safetensors package's reading of it:
    // names, shapes), beside what the config says; and the config's sizes by their HF names.
    for (dir, gpt2) in [
        ("tiny-qwen2", false),
        ("tiny-llama-untied", false),
        ("tiny-gpt2", true),
    ] {
        let dir = fixtures().join(dir);
        let json = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let shape = ModelShape::from_config_json("config.json", &json).unwrap();
        let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
        let stored: u64 = st
            .tensors()
            .iter()
            .filter(|(name, _)| !name.ends_with(".attn.bias") && !name.ends_with("masked_bias"))
            .map(|(_, t)| t.shape().iter().product::<usize>() as u64)
            .sum();
        assert_eq!(shape.parameters, stored, "{}", dir.display());
        let c: serde_json::Value = serde_json::from_str(&json).unwrap();
        let key = |hf: &str, gpt: &str| c[if gpt2 { gpt } else { hf }].as_u64().unwrap();
        assert_eq!(shape.layers, key("num_hidden_layers", "n_layer"));
        assert_eq!(shape.hidden, key("hidden_size", "n_embd"));
        assert_eq!(shape.heads, key("num_attention_heads", "n_head"));
        assert_eq!(shape.vocab, key("vocab_size", "vocab_size"));
        if !gpt2 {
            assert_eq!(shape.intermediate, key("intermediate_size", ""));
        }
    }
}

#[test]
fn a_run_over_the_memory_limit_is_refused_with_what_would_fit() {
    let mut s = Session::new(webtune::device::cpu());
    let bytes = std::fs::read(fixtures().join("tiny-llama-q.gguf")).unwrap();
    s.set_model(BaseModel::from_gguf("tiny-llama-q.gguf", bytes, s.device()).unwrap());
    s.add_text("a.txt", "the cat sat on the mat. ".repeat(400).as_bytes())
        .unwrap();
    let mut spec = RunSpec::default();
    spec.data.seq_len = 64;
    spec.train.steps = 1;
    spec.train.batch_size = 32;

    // No limit (natively): the plan says what the run takes, and it fits.
    let plan = s.plan(&spec).unwrap();
    let m = &plan.memory;
    assert!(m.fits && m.limit.is_none() && m.advice.is_none(), "{m:?}");
    assert_eq!(m.loading, 0, "the model is loaded already");
    assert_eq!(m.adapter, plan.trainable_parameters as u64 * 16);
    assert!(m.training > m.weights + m.activations, "{m:?}");

    // A limit between what a batch of 4 and a batch of 32 need.
    let mut small = spec.clone();
    small.train.batch_size = 4;
    small.exec.recompute = true;
    let small_need = s.plan(&small).unwrap().memory.peak;
    s.set_memory_limits(MemoryLimits {
        total: Some(small_need + 1),
        buffer: None,
    });
    let m = s.plan(&spec).unwrap().memory;
    assert!(!m.fits && m.limit == Some(small_need + 1), "{m:?}");
    let advice = m.advice.clone().unwrap();
    assert!(advice.contains("\"Save memory\""), "{advice}");
    assert!(advice.contains("batch"), "{advice}");
    let e = s.start(spec.clone()).unwrap_err().to_string();
    assert!(
        e.starts_with("this run needs ~") && e.contains(&advice),
        "{e}"
    );

    // What the advice names fits, and starts.
    s.start(small).unwrap();
}
