//! Broken model files give a typed error that names the file and, where there is one, the tensor.
//! None of them may panic.
// Native only: reads fixtures and fetched files from disk (the browser tests are in crate/wasm/tests/browser.rs).

use crate::common::gguf_writer::{rewrite, tiny_gguf};
use crate::common::*;
use webtune::formats::gguf::{GgufFile, Value};
use webtune::{BaseModel, Error, NamedFile};

fn load_gguf(bytes: Vec<u8>) -> Result<BaseModel, Error> {
    BaseModel::from_gguf("broken.gguf", bytes, &webtune::device::cpu())
}

fn message(result: Result<BaseModel, Error>) -> (Error, String) {
    match result {
        Ok(_) => panic!("a broken file loaded without error"),
        Err(e) => {
            let m = e.to_string();
            println!("{m}");
            (e, m)
        }
    }
}

#[test]
fn the_rewritten_fixture_still_loads() {
    // Guards the tests below: they break one thing each in an otherwise valid file.
    load_gguf(rewrite(|_, _| {})).unwrap();
}

#[test]
fn bad_magic() {
    let mut bytes = tiny_gguf();
    bytes[..4].copy_from_slice(b"PK\x03\x04");
    let (e, m) = message(load_gguf(bytes));
    assert!(matches!(e, Error::Format { .. }));
    assert!(
        m.contains("broken.gguf") && m.contains("not a GGUF file"),
        "{m}"
    );
}

#[test]
fn unsupported_version() {
    let mut bytes = tiny_gguf();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
    let (_, m) = message(load_gguf(bytes));
    assert!(m.contains("broken.gguf") && m.contains("version 7"), "{m}");
}

#[test]
fn truncated_header() {
    let mut bytes = tiny_gguf();
    bytes.truncate(300);
    let (e, m) = message(load_gguf(bytes));
    assert!(
        matches!(e, Error::Truncated { .. } | Error::Format { .. }),
        "{e:?}"
    );
    assert!(m.contains("broken.gguf") && m.contains("truncated"), "{m}");
}

#[test]
fn truncated_tensor_data_names_the_tensor() {
    let mut bytes = tiny_gguf();
    bytes.truncate(bytes.len() - 100);
    let (e, m) = message(load_gguf(bytes));
    assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
    assert!(m.contains("tensor `"), "{m}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = tiny_gguf();
    for len in (0..bytes.len()).step_by(89) {
        assert!(
            GgufFile::parse("cut.gguf", bytes[..len].to_vec()).is_err(),
            "len {len}"
        );
    }
}

#[test]
fn corrupt_bytes_never_panic() {
    let bytes = tiny_gguf();
    let mut rng = webtune::rng::Rng::new(5);
    for _ in 0..150 {
        let mut b = bytes.clone();
        // Flip bytes in the header region, where they change structure rather than values.
        for _ in 0..4 {
            let i = (rng.next_u64() as usize) % 2048.min(b.len());
            b[i] ^= 1 << (rng.next_u64() % 8);
        }
        let _ = load_gguf(b); // Ok or Err are both fine; a panic fails the test.
    }
}

#[test]
fn huge_metadata_count() {
    let mut bytes = tiny_gguf();
    // header: magic, version, tensor count (u64), metadata count (u64)
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_, m) = message(load_gguf(bytes));
    assert!(
        m.contains("broken.gguf") && m.contains("metadata count"),
        "{m}"
    );
}

#[test]
fn unsupported_tensor_type_names_the_tensor_and_type() {
    let bytes = rewrite(|_, tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.name == "blk.1.ffn_up.weight")
            .unwrap();
        // IQ2_XXS (ggml type 16): 256 weights a block of 66 bytes. Give it data of that size.
        t.dtype = webtune::formats::ggml::GgmlType::from_id(16);
        let n: usize = t.shape.iter().product();
        t.data = vec![0; n / 256 * 66];
    });
    let (e, m) = message(load_gguf(bytes));
    assert!(
        matches!(
            e,
            Error::UnsupportedTensorType { .. } | Error::Format { .. }
        ),
        "{e:?}"
    );
    assert!(
        m.contains("blk.1.ffn_up.weight") && m.contains("IQ type") && m.contains("16"),
        "{m}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let bytes = rewrite(|_, tensors| tensors.retain(|t| t.name != "blk.1.ffn_down.weight"));
    let (e, m) = message(load_gguf(bytes));
    assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    assert!(m.contains("blk.1.ffn_down.weight"), "{m}");
}

#[test]
fn metadata_that_disagrees_with_the_weights() {
    let bytes = rewrite(|meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "llama.feed_forward_length" {
                *v = Value::U32(48);
            }
        }
    });
    let (e, m) = message(load_gguf(bytes));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert!(m.contains("ffn_gate") && m.contains("48"), "{m}");
}

#[test]
fn unsupported_architecture() {
    let bytes = rewrite(|meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "general.architecture" {
                *v = Value::String("mamba".into());
            }
        }
    });
    let (e, m) = message(load_gguf(bytes));
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert!(m.contains("mamba") && m.contains("broken.gguf"), "{m}");
}

fn hf_files(dir: &str) -> Vec<NamedFile> {
    let dir = fixtures().join(dir);
    let mut files = vec![NamedFile::new(
        "tokenizer.json",
        tiny_tokenizer_json().into_bytes(),
    )];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name != "golden.safetensors" {
            files.push(NamedFile::new(name, std::fs::read(entry.path()).unwrap()));
        }
    }
    files
}

/// A byte-level tokenizer of the tiny models' 96 tokens, enough to load the folder.
fn tiny_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..96u32)
        .map(|i| (char::from_u32(0x21 + i).unwrap().to_string(), i.into()))
        .collect();
    serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}
    })
    .to_string()
}

fn load_hf(files: Vec<NamedFile>) -> Result<BaseModel, Error> {
    BaseModel::from_hf_files("tiny", files, &webtune::device::cpu())
}

#[test]
fn hf_folder_loads_when_whole() {
    load_hf(hf_files("tiny-llama-tied")).unwrap();
    load_hf(hf_files("tiny-llama-sharded-bf16")).unwrap();
}

#[test]
fn safetensors_with_a_garbage_header() {
    let mut files = hf_files("tiny-llama-tied");
    let st = files
        .iter_mut()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    st.bytes[8..16].copy_from_slice(b"not json");
    let (e, m) = message(load_hf(files));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(
        m.contains("model.safetensors") && m.contains("not a valid safetensors"),
        "{m}"
    );
}

#[test]
fn truncated_safetensors() {
    let mut files = hf_files("tiny-llama-tied");
    let st = files
        .iter_mut()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    st.bytes.truncate(st.bytes.len() / 2);
    let (_, m) = message(load_hf(files));
    assert!(m.contains("model.safetensors"), "{m}");
}

#[test]
fn missing_shard_is_named() {
    let mut files = hf_files("tiny-llama-sharded-bf16");
    files.retain(|f| f.name != "model-00002-of-00003.safetensors");
    let (_, m) = message(load_hf(files));
    assert!(m.contains("model-00002-of-00003.safetensors"), "{m}");
}

#[test]
fn config_that_disagrees_with_the_weights() {
    let mut files = hf_files("tiny-llama-tied");
    let cfg = files.iter_mut().find(|f| f.name == "config.json").unwrap();
    let text = String::from_utf8(cfg.bytes.clone()).unwrap();
    cfg.bytes = text
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 80")
        .into_bytes();
    let (e, m) = message(load_hf(files));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert!(
        m.contains("model.layers.0.mlp.gate_proj.weight") && m.contains("80"),
        "{m}"
    );
}

#[test]
fn config_json_that_is_not_json_or_not_llama() {
    let mut files = hf_files("tiny-llama-tied");
    let cfg = files.iter_mut().find(|f| f.name == "config.json").unwrap();
    cfg.bytes = b"{ \"model_type\": ".to_vec();
    let (e, m) = message(load_hf(files));
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert!(m.contains("config.json"), "{m}");

    let mut files = hf_files("tiny-llama-tied");
    let cfg = files.iter_mut().find(|f| f.name == "config.json").unwrap();
    let text = String::from_utf8(cfg.bytes.clone()).unwrap();
    cfg.bytes = text.replace("\"llama\"", "\"gpt_neox\"").into_bytes();
    let (_, m) = message(load_hf(files));
    assert!(m.contains("gpt_neox") && m.contains("not supported"), "{m}");
}
