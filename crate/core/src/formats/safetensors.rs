//! Hugging Face safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. F32, F16 and BF16 are read; the result is f32.

use std::collections::{BTreeMap, HashMap};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors, tensor::Metadata, tensor::TensorView};

use super::{Checkpoint, HostTensor};
use crate::error::{Error, Result};

/// The bytes of one safetensors file and its parsed header.
struct Shard {
    name: String,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

/// A checkpoint made of one or more safetensors files.
pub struct SafetensorsCheckpoint {
    shards: Vec<Shard>,
    /// tensor name -> index into `shards`
    owner: HashMap<String, usize>,
    /// What to call the checkpoint in messages (the single file, or the index).
    display_name: String,
}

/// `model.safetensors.index.json`: `{"weight_map": {"tensor": "file"}}`.
#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The shard files a `model.safetensors.index.json` names, each once: file names within the
/// folder (a path that leaves it, or names a folder, is an error naming the index).
pub fn shard_files(index_name: &str, index_json: &str) -> Result<Vec<String>> {
    let index: Index = serde_json::from_str(index_json)
        .map_err(|e| Error::format(index_name, format!("not a safetensors index: {e}")))?;
    let files: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
    files
        .into_iter()
        .map(|f| {
            if f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.') {
                Err(Error::format(
                    index_name,
                    format!("shard `{f}` is not a file name in the model's folder"),
                ))
            } else {
                Ok(f.clone())
            }
        })
        .collect()
}

impl SafetensorsCheckpoint {
    /// One safetensors file.
    pub fn single(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let shard = parse_shard(name.into(), bytes)?;
        let display_name = shard.name.clone();
        let owner = shard
            .metadata
            .tensors()
            .into_keys()
            .map(|k| (k, 0))
            .collect();
        Ok(Self {
            shards: vec![shard],
            owner,
            display_name,
        })
    }

    /// A sharded checkpoint: the index file's name and text, and a function that yields a
    /// shard's bytes by file name (from disk natively, from the picked files in a browser).
    pub fn sharded(
        index_name: &str,
        index_json: &str,
        mut read_shard: impl FnMut(&str) -> Result<Vec<u8>>,
    ) -> Result<Self> {
        let index: Index = serde_json::from_str(index_json)
            .map_err(|e| Error::format(index_name, format!("not a safetensors index: {e}")))?;
        let mut shard_of_file: BTreeMap<&str, usize> = BTreeMap::new();
        let mut shards = Vec::new();
        let mut owner = HashMap::new();
        for (tensor, file) in &index.weight_map {
            let idx = match shard_of_file.get(file.as_str()) {
                Some(&i) => i,
                None => {
                    let shard = parse_shard(file.clone(), read_shard(file)?)?;
                    shards.push(shard);
                    shard_of_file.insert(file, shards.len() - 1);
                    shards.len() - 1
                }
            };
            if shards[idx].metadata.info(tensor).is_none() {
                return Err(Error::format(
                    index_name,
                    format!("the index puts `{tensor}` in {file}, but that file does not hold it"),
                ));
            }
            owner.insert(tensor.clone(), idx);
        }
        Ok(Self {
            shards,
            owner,
            display_name: index_name.to_string(),
        })
    }

    /// A `__metadata__` entry of the (first) file's header.
    pub fn metadata_entry(&self, key: &str) -> Option<&str> {
        let shard = self.shards.first()?;
        shard
            .metadata
            .metadata()
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// Names of all tensors.
    pub fn names(&self) -> Vec<&str> {
        self.owner.keys().map(String::as_str).collect()
    }
}

fn parse_shard(name: String, bytes: Vec<u8>) -> Result<Shard> {
    let (header_len, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(&name, format!("not a valid safetensors file: {e}")))?;
    Ok(Shard {
        data_start: 8 + header_len,
        name,
        bytes,
        metadata,
    })
}

impl Checkpoint for SafetensorsCheckpoint {
    fn file_name(&self) -> &str {
        &self.display_name
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let shard = &self.shards[*self.owner.get(name)?];
        shard.metadata.info(name).map(|i| i.shape.clone())
    }

    fn load(&self, name: &str) -> Result<HostTensor> {
        let missing = || Error::MissingTensor {
            file: self.display_name.clone(),
            tensor: name.to_string(),
        };
        let shard = &self.shards[*self.owner.get(name).ok_or_else(missing)?];
        let info = shard.metadata.info(name).ok_or_else(missing)?;
        // read_metadata validated the offsets against the buffer.
        let (start, end) = info.data_offsets;
        let bytes = &shard.bytes[shard.data_start + start..shard.data_start + end];
        let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(le16(b)).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(le16(b)).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedTensorType {
                    file: shard.name.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                    supported: "F32, F16, BF16",
                });
            }
        };
        Ok(HostTensor::new(info.shape.clone(), data))
    }
}

/// Serializes f32 tensors as a safetensors file named `file` (for messages), stored as F32 or,
/// with `f16`, as F16, with `metadata` in the header.
pub fn write(
    file: &str,
    tensors: &[(String, HostTensor)],
    f16: bool,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let encoded: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let bytes = if f16 {
                t.data
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect()
            } else {
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            (k.as_str(), t.shape.as_slice(), bytes)
        })
        .collect();
    let dtype = if f16 { Dtype::F16 } else { Dtype::F32 };
    let views = encoded
        .iter()
        .map(|(k, shape, bytes)| {
            TensorView::new(dtype, shape.to_vec(), bytes)
                .map(|v| (k.to_string(), v))
                .map_err(|e| Error::Invalid(format!("could not write {file}: {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Invalid(format!("could not write {file}: {e}")))
}
