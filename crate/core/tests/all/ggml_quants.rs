//! ggml's block types against the `gguf` package's dequantization (llama.cpp's reference in
//! numpy; `tests/fixtures/ggml_blocks.py`): random blocks of every type webtune reads, each
//! weight the reference's within f32 rounding.

use crate::common::*;
use webtune::formats::ggml::GgmlType;

#[test]
fn every_block_type_dequantizes_as_the_gguf_package_does() {
    let golden = Golden::open(&fixtures().join("ggml_blocks.safetensors"));
    let types = [
        ("Q4_0", 2),
        ("Q4_1", 3),
        ("Q5_0", 6),
        ("Q5_1", 7),
        ("Q8_0", 8),
        ("Q2_K", 10),
        ("Q3_K", 11),
        ("Q4_K", 12),
        ("Q5_K", 13),
        ("Q6_K", 14),
    ];
    for (name, id) in types {
        let dtype = GgmlType::from_id(id);
        assert_eq!(dtype.name(), name);
        let bytes = golden.u8(&format!("{name}.bytes"));
        let (_, want) = golden.f32(&format!("{name}.values"));
        assert_eq!(dtype.byte_len(want.len()), Some(bytes.len()), "{name}");
        let mut got = Vec::new();
        dtype.dequantize(&bytes, &mut got);
        assert_eq!(got.len(), want.len(), "{name}");
        // The same products of the same f16 scales and integers, in another order at most.
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = max_abs_diff(&got, &want);
        println!("{name}: max |webtune - gguf| = {diff:e} of {scale}");
        assert!(
            diff <= 1e-6 * scale,
            "{name}: differs by {diff} (of {scale})"
        );
    }
}
