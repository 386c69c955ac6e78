//! GGUF (v2, v3): header, metadata, tensor infos and data, as llama.cpp writes them.
//!
//! The reader owns the file's bytes (a browser hands them over as one buffer) and dequantizes a
//! tensor only when it is asked for. [`GgufCheckpoint`] presents a file under HF tensor names and
//! layouts, through the [`GgufTensorMap`] of the model's family (`model::*::gguf`).

use std::collections::{BTreeMap, HashMap};

use super::ggml::{self, GgmlType};
use super::{Checkpoint, HostTensor};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Sanity bounds, so that a corrupt count fails with a message instead of a huge allocation.
const MAX_DIMS: u32 = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (GGUF lists dimensions fastest-first; this is reversed).
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
}

/// A parsed GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    pub file_name: String,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Tensor name -> position in `tensors`.
    index: HashMap<String, usize>,
    bytes: Vec<u8>,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    file: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// The whole file's length: `bytes` may be its beginning only ([`GgufFile::parse_header`]).
    file_len: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(Error::Truncated {
                file: self.file.to_string(),
                what: what.to_string(),
                needed: self.pos as u64 + n as u64,
                len: self.bytes.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count, checked against what the rest of the file could possibly hold.
    fn count(&mut self, version: u32, min_item_bytes: usize, what: &str) -> Result<usize> {
        let n = if version == 1 {
            u64::from(self.u32(what)?)
        } else {
            self.u64(what)?
        };
        let remaining = self.file_len.saturating_sub(self.pos as u64);
        if n.saturating_mul(min_item_bytes as u64) > remaining {
            return Err(Error::format(
                self.file,
                format!(
                    "{what} is {n}, more than the rest of the file can hold: the file is corrupt or truncated"
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, version: u32, what: &str) -> Result<String> {
        let len = self.count(version, 1, what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::format(self.file, format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, version: u32, type_id: u32, key: &str, depth: u8) -> Result<Value> {
        let what = format!("metadata `{key}`");
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::String(self.string(version, &what)?),
            9 if depth == 0 => {
                let item_type = self.u32(&what)?;
                // Each item takes at least its own size in the file (a string its length), so a
                // corrupt count fails here; a `Value` is 32 bytes, so reserve no more than a
                // bounded amount up front either way.
                let item_bytes = match item_type {
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => 1,
                };
                let n = self.count(version, item_bytes, &what)?;
                if n > crate::limits::MAX_GGUF_ARRAY {
                    return Err(Error::format(
                        self.file,
                        format!(
                            "{what} is an array of {n} items, more than webtune reads ({})",
                            crate::limits::MAX_GGUF_ARRAY
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(version, item_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(Error::format(
                    self.file,
                    format!("{what} has unknown value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Parses the header, metadata and tensor infos, and checks that every tensor's data is inside
    /// the file. Tensor data is dequantized later, one tensor at a time.
    pub fn parse(file_name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let file_len = bytes.len() as u64;
        Self::parse_with_len(file_name.into(), bytes, file_len)
    }

    /// Parses the header, metadata and tensor infos from the file's first bytes (`head`), the
    /// file being `file_len` bytes long: what a model is can be known before the whole file is
    /// read (e.g. to say whether it fits in memory). A header longer than `head` is
    /// [`Error::Truncated`], with the length it needs; tensor data cannot be read from the result.
    pub fn parse_header(
        file_name: impl Into<String>,
        head: Vec<u8>,
        file_len: u64,
    ) -> Result<Self> {
        let file_name = file_name.into();
        if (head.len() as u64) > file_len {
            return Err(Error::Invalid(format!(
                "{file_name}: {} bytes given of a file of {file_len}",
                head.len()
            )));
        }
        Self::parse_with_len(file_name, head, file_len)
    }

    fn parse_with_len(file_name: String, bytes: Vec<u8>, file_len: u64) -> Result<Self> {
        let mut cur = Cursor {
            file: &file_name,
            bytes: &bytes,
            pos: 0,
            file_len,
        };
        let magic = cur.array::<4>("the GGUF magic")?;
        if &magic != MAGIC {
            return Err(Error::format(
                &file_name,
                format!(
                    "not a GGUF file (it starts with {:?}, a GGUF file starts with \"GGUF\")",
                    String::from_utf8_lossy(&magic)
                ),
            ));
        }
        let version = cur.u32("the GGUF version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(
                &file_name,
                format!("GGUF version {version} is not supported (versions 2 and 3 are)"),
            ));
        }
        // A tensor info takes at least 8 (name length) + 4 + 4 + 8 bytes; a key-value at least 12.
        let n_tensors = cur.count(version, 24, "the tensor count")?;
        let n_kv = cur.count(version, 12, "the metadata count")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = cur.string(version, "a metadata key")?;
            let type_id = cur.u32(&format!("the type of metadata `{key}`"))?;
            let value = cur.value(version, type_id, &key, 0)?;
            // Which of two values a reader would take is up to the reader: refuse, don't guess.
            if metadata.insert(key.clone(), value).is_some() {
                return Err(Error::format(
                    &file_name,
                    format!("the metadata key `{key}` appears twice"),
                ));
            }
        }

        let mut infos = Vec::with_capacity(n_tensors);
        let mut index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = cur.string(version, "a tensor name")?;
            if index.insert(name.clone(), i).is_some() {
                return Err(Error::format(
                    &file_name,
                    format!("the tensor `{name}` appears twice"),
                ));
            }
            let what = format!("the info of tensor `{name}`");
            let n_dims = cur.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::format(
                    &file_name,
                    format!("tensor `{name}` has {n_dims} dimensions"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64(&what)?);
            }
            let dtype = GgmlType::from_id(cur.u32(&what)?);
            let offset = cur.u64(&what)?;
            infos.push((name, dims, dtype, offset));
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| {
                    Error::format(&file_name, "general.alignment is not a power of two")
                })?,
        };
        let data_start = (cur.pos as u64).div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, dtype, rel_offset) in infos {
            let mut shape = Vec::with_capacity(dims.len());
            for &d in dims.iter().rev() {
                shape.push(usize::try_from(d).map_err(|_| {
                    Error::format(&file_name, format!("tensor `{name}` is too large"))
                })?);
            }
            // llama.cpp places every tensor at a multiple of the alignment: another offset is
            // a broken (or forged) file, not a layout to read as it is.
            if !rel_offset.is_multiple_of(alignment) {
                return Err(Error::format(
                    &file_name,
                    format!(
                        "tensor `{name}` starts at offset {rel_offset}, not a multiple of the \
                         file's alignment ({alignment})"
                    ),
                ));
            }
            let offset = data_start.checked_add(rel_offset);
            let info = TensorInfo {
                name,
                shape,
                dtype,
                offset: offset.unwrap_or(u64::MAX),
            };
            // Types webtune can't read are only an error if the tensor is used: check bounds
            // for the others now, so a truncated file fails at once with the tensor's name.
            if let Some(len) = tensor_byte_len(&info) {
                let end = info.offset.saturating_add(len as u64);
                if end > file_len {
                    return Err(Error::Truncated {
                        file: file_name.clone(),
                        what: format!("tensor `{}`", info.name),
                        needed: end,
                        len: file_len,
                    });
                }
            }
            tensors.push(info);
        }

        Ok(Self {
            file_name,
            version,
            metadata,
            tensors,
            index,
            bytes,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor (for copying it into another file unchanged).
    pub fn raw_bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensor_info(name)?;
        let len = tensor_byte_len(info)?;
        let start = info.offset as usize;
        self.bytes.get(start..start + len)
    }

    /// Dequantizes one tensor (GGUF name) to f32, row-major.
    pub fn dequantize(&self, name: &str) -> Result<HostTensor> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            file: self.file_name.clone(),
            tensor: name.to_string(),
        })?;
        let n: usize = info.shape.iter().product();
        let unsupported = || Error::UnsupportedTensorType {
            file: self.file_name.clone(),
            tensor: info.name.clone(),
            dtype: info.dtype.name(),
            supported: ggml::SUPPORTED,
        };
        if info.dtype.block_layout().is_none() {
            return Err(unsupported());
        }
        let len = tensor_byte_len(info).ok_or_else(|| {
            Error::format(
                &self.file_name,
                format!(
                    "tensor `{}` has {n} elements, not a whole number of {} blocks",
                    info.name,
                    info.dtype.name()
                ),
            )
        })?;
        // Bounds were checked against the file's length at parse time; a file parsed from its
        // header only (`parse_header`) has no tensor data to read.
        let start = info.offset as usize;
        let bytes = self.bytes.get(start..start + len).ok_or_else(|| {
            Error::format(
                &self.file_name,
                format!("tensor `{}`: only the file's header was read", info.name),
            )
        })?;
        let mut data = Vec::with_capacity(n);
        info.dtype.dequantize(bytes, &mut data);
        Ok(HostTensor::new(info.shape.clone(), data))
    }
}

fn tensor_byte_len(info: &TensorInfo) -> Option<usize> {
    let n = info
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    // A row (the fastest dimension) must hold whole blocks.
    let row = *info.shape.last()?;
    let (per_block, _) = info.dtype.block_layout()?;
    if !row.is_multiple_of(per_block) {
        return None;
    }
    info.dtype.byte_len(n)
}

/// How a model family names and lays out its tensors in GGUF (llama.cpp's tensor map for that
/// architecture). Each family implements it next to its model code.
pub trait GgufTensorMap {
    /// The GGUF name of the tensor HF calls `hf` (`model.norm.weight` -> `output_norm.weight`).
    fn gguf_name(&self, hf: &str) -> Option<String>;
    /// The HF shape of `hf`, stored in the GGUF file with (row-major) shape `gguf_shape`.
    fn hf_shape(&self, hf: &str, gguf_shape: &[usize]) -> Vec<usize>;
    /// A tensor as the GGUF file holds it (row-major, GGUF's dimensions reversed) -> HF's layout;
    /// `Err` says why the tensor cannot be that weight.
    fn gguf_to_hf(&self, hf: &str, t: HostTensor) -> std::result::Result<HostTensor, String>;
    /// HF's layout -> as a GGUF file holds it: the inverse of [`Self::gguf_to_hf`].
    fn hf_to_gguf(&self, hf: &str, t: HostTensor) -> std::result::Result<HostTensor, String>;
    /// A LoRA B (`[d_out, r]`, PEFT's layout) of the weight `hf`, with its rows in the order of
    /// the GGUF weight's output rows, as llama.cpp applies an adapter.
    fn lora_b_to_gguf(&self, hf: &str, b: HostTensor) -> std::result::Result<HostTensor, String>;
}

/// A GGUF file seen through HF tensor names and layouts, by its family's [`GgufTensorMap`].
pub struct GgufCheckpoint {
    pub gguf: GgufFile,
    map: Box<dyn GgufTensorMap>,
}

impl GgufCheckpoint {
    pub fn new(gguf: GgufFile, map: Box<dyn GgufTensorMap>) -> Self {
        Self { gguf, map }
    }
}

impl Checkpoint for GgufCheckpoint {
    fn file_name(&self) -> &str {
        &self.gguf.file_name
    }

    fn source_name(&self, hf_name: &str) -> String {
        match self.map.gguf_name(hf_name) {
            Some(g) => format!("{g}` (`{hf_name}"),
            None => hf_name.to_string(),
        }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let gguf_name = self.map.gguf_name(name)?;
        let info = self.gguf.tensor_info(&gguf_name)?;
        Some(self.map.hf_shape(name, &info.shape))
    }

    fn load(&self, name: &str) -> Result<HostTensor> {
        let gguf_name = self
            .map
            .gguf_name(name)
            .ok_or_else(|| Error::MissingTensor {
                file: self.gguf.file_name.clone(),
                tensor: name.to_string(),
            })?;
        let t = self.gguf.dequantize(&gguf_name)?;
        self.map.gguf_to_hf(name, t).map_err(|problem| {
            Error::format(
                &self.gguf.file_name,
                format!("tensor `{gguf_name}` {problem}"),
            )
        })
    }
}
