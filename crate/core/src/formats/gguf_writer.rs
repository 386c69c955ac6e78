//! A GGUF v3 writer: metadata and tensors, as llama.cpp's `gguf-py` writes them (little-endian,
//! tensor data aligned to `general.alignment`, 32 by default).

use super::ggml::GgmlType;
use super::gguf::Value;

const ALIGNMENT: usize = 32;

/// One tensor to write: row-major `shape` (written fastest-first, as GGUF wants), and its bytes
/// already in `dtype`'s layout.
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    pub data: Vec<u8>,
}

impl TensorEntry {
    /// An F32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            shape,
            dtype: GgmlType::F32,
            data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// An F16 tensor (values rounded to nearest).
    pub fn f16(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            shape,
            dtype: GgmlType::F16,
            data: values
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }
}

/// ggml's type id.
pub fn ggml_id(t: GgmlType) -> u32 {
    t.id()
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            // An empty array's item type is arbitrary; u32 as gguf-py writes it.
            let item_type = items.first().map_or(4, value_type);
            out.extend(item_type.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// The bytes of a GGUF v3 file holding `metadata` (in order) and `tensors`.
pub fn write(metadata: &[(String, Value)], tensors: &[TensorEntry]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend(value_type(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(ggml_id(t.dtype).to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset += t.data.len().div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
    let start = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(start + off, 0);
        out.extend(&t.data);
    }
    out
}
