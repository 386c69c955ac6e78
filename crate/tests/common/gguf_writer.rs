//! A minimal GGUF v3 writer, so tests can build valid files and then break them on purpose.

use webtune::formats::gguf::{GgufFile, Value};

pub struct TensorEntry {
    pub name: String,
    /// Row-major shape (written fastest-first, as GGUF wants).
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
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

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            let item_type = items.first().map_or(4, type_id);
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

pub fn write(metadata: &[(String, Value)], tensors: &[TensorEntry]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend(type_id(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.ggml_type.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset += (t.data.len() as u64).div_ceil(32) * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    let start = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(start + off as usize, 0);
        out.extend(&t.data);
    }
    out
}

/// The metadata and tensors of a parsed file, to rewrite with changes.
pub fn parts(file: &GgufFile) -> (Vec<(String, Value)>, Vec<TensorEntry>) {
    let metadata = file
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors = file
        .tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ggml_type: ggml_id(t.dtype),
            data: file.raw_bytes(&t.name).unwrap().to_vec(),
        })
        .collect();
    (metadata, tensors)
}

fn ggml_id(t: webtune::formats::ggml::GgmlType) -> u32 {
    use webtune::formats::ggml::GgmlType::*;
    match t {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 8,
        BF16 => 30,
        Other(id) => id,
    }
}
