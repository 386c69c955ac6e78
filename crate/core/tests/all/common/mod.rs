//! Shared helpers for the integration tests: fixture paths, golden tensors, comparisons.
#![allow(dead_code)]

pub mod gguf_writer;

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use webtune::burn::tensor::{Device, Int, Tensor, TensorData};

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Where the setup script puts files that are fetched, not committed (the SmolLM2 GGUF, the
/// GPT-2 vocabulary). `WEBTUNE_CACHE` overrides `~/.cache/webtune`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("WEBTUNE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/webtune")
        }
    }
}

/// A fetched file, or a failure that says how to fetch it.
pub fn fetched(relative: &str) -> PathBuf {
    let path = cache_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `bash tests/setup.sh` (the README's test command does) to fetch it",
        path.display()
    );
    path
}

/// A tensor from a golden safetensors file, as (shape, f32 values or i64 values).
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes }
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    }

    pub fn u8(&self, name: &str) -> Vec<u8> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        t.data().to_vec()
    }

    pub fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        let v = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    }
}

/// A tiny Llama fixture folder with a single `model.safetensors` (e.g. `tiny-llama-tied`).
pub fn load_fixture_model(name: &str, device: &Device) -> webtune::model::CausalLM {
    let dir = fixtures().join(name);
    let config_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = webtune::model::ModelConfig::from_json("config.json", &config_text).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let ckpt =
        webtune::formats::safetensors::SafetensorsCheckpoint::single("model.safetensors", bytes)
            .unwrap();
    config.load(&ckpt, device).unwrap()
}

pub fn ids_tensor(shape: &[usize], ids: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [shape[0], shape[1]]), device)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// How far `got` is from `want`, relative to `want`'s size: |got - want|_2 / |want|_2.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f32 {
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|a| a * a).sum::<f32>().sqrt();
    norm(&mut got.iter().zip(want).map(|(a, b)| a - b)) / norm(&mut want.iter().copied())
}

/// A golden case's `input_ids` as training windows (labels = input_ids in transformers:
/// predict token i+1 from tokens 0..=i).
pub fn golden_windows(g: &Golden) -> Vec<Vec<u32>> {
    let (shape, ids) = g.i64("input_ids");
    ids.chunks(shape[1])
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect()
}

/// `model`'s loss on the golden case's windows and its gradients, on the training path (the LM
/// head fused with the loss on the CPU backend), with every activation kept or each layer
/// recomputed in the backward pass (`exec.recompute`). `device` has autodiff.
pub fn golden_loss_and_gradients(
    model: &webtune::model::CausalLM,
    g: &Golden,
    device: &Device,
    recompute: bool,
) -> (Tensor<1>, webtune::burn::optim::GradientsParams) {
    let windows = golden_windows(g);
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let (inputs, targets) = webtune::train::batch_tensors(&refs, device);
    if recompute {
        model.loss_recomputed(inputs, targets, 1.0, 0)
    } else {
        let loss = model.loss(inputs, targets);
        let grads =
            webtune::burn::optim::GradientsParams::from_grads(loss.clone().backward(), model);
        (loss, grads)
    }
}
