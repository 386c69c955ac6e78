//! Rewriting GGUF files in tests: the library's writer, and a parsed file taken apart so that
//! tests can break one thing in an otherwise valid file.

use webtune::formats::gguf::{GgufFile, Value};
pub use webtune::formats::gguf_writer::TensorEntry;

/// The bytes of a GGUF file (the library's writer).
pub fn write(metadata: &[(String, Value)], tensors: &[TensorEntry]) -> Vec<u8> {
    webtune::formats::gguf_writer::write(metadata, tensors)
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
            dtype: t.dtype,
            data: file.raw_bytes(&t.name).unwrap().to_vec(),
        })
        .collect();
    (metadata, tensors)
}

/// The tiny quantized fixture model's GGUF bytes.
pub fn tiny_gguf() -> Vec<u8> {
    std::fs::read(super::fixtures().join("tiny-llama-q.gguf")).unwrap()
}

/// The tiny GGUF fixture with `edit` applied to its metadata and tensors.
pub fn rewrite(edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<TensorEntry>)) -> Vec<u8> {
    let file = GgufFile::parse("tiny-llama-q.gguf", tiny_gguf()).unwrap();
    let (mut meta, mut tensors) = parts(&file);
    edit(&mut meta, &mut tensors);
    write(&meta, &tensors)
}
