//! A run taken further, for a person who outgrows the browser: the files a PyTorch +
//! transformers + PEFT script (`train_peft.py`, beside this file; `accelerate launch` runs it on
//! every GPU of a machine, or a cluster with DeepSpeed or FSDP) needs to continue the run: the
//! run spec whole, the training and validation windows exactly as webtune made them (token ids,
//! and labels of -100 where the loss does not learn: prompts, padding), the adapter to continue,
//! and the script with the base model named.

use std::fmt::Write as _;

use crate::data::{Dataset, is_trained, token_id};
use crate::formats::peft::{AdapterFiles, CONFIG_FILE, WEIGHTS_FILE};
use crate::spec::RunSpec;

/// The script, its base model written in by [`files`].
pub const SCRIPT: &str = include_str!("train_peft.py");

/// The recipe's files, `(path, bytes)`: `train_peft.py`, `run.json`, `train.jsonl`,
/// `val.jsonl`, and `adapter/` when there is an adapter to continue. `base_id` is what the
/// script loads as the base (a Hugging Face id, or a folder).
pub fn files(
    spec: &RunSpec,
    base_id: &str,
    data: &Dataset,
    adapter: Option<&AdapterFiles>,
) -> Vec<(String, Vec<u8>)> {
    // A JSON string is a Python string literal too (its escapes are Python's).
    let base = serde_json::to_string(base_id).expect("a string serializes");
    let mut out = vec![
        (
            "train_peft.py".to_string(),
            SCRIPT.replace("\"@BASE@\"", &base).into_bytes(),
        ),
        ("run.json".to_string(), spec.to_json().into_bytes()),
        ("train.jsonl".to_string(), windows(&data.train)),
        ("val.jsonl".to_string(), windows(&data.val)),
    ];
    if let Some(a) = adapter {
        out.push((
            format!("adapter/{CONFIG_FILE}"),
            a.config_json.clone().into_bytes(),
        ));
        out.push((format!("adapter/{WEIGHTS_FILE}"), a.safetensors.clone()));
    }
    out
}

/// Windows as JSON Lines of `{ input_ids, labels }`: transformers' convention, where the model
/// shifts the labels (a window's first token is never a target).
fn windows(windows: &[Vec<u32>]) -> Vec<u8> {
    let mut out = String::new();
    for w in windows {
        let ids: Vec<u32> = w.iter().map(|&t| token_id(t)).collect();
        let labels: Vec<i64> = w
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if i > 0 && is_trained(t) {
                    i64::from(token_id(t))
                } else {
                    -100
                }
            })
            .collect();
        let line = serde_json::json!({ "input_ids": ids, "labels": labels });
        let _ = writeln!(out, "{line}");
    }
    out.into_bytes()
}
