//! ggml tensor types and their dequantization to f32 (the block layouts of ggml's reference code).

use half::{bf16, f16};

/// A ggml tensor type as stored in GGUF files (`ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    /// 32 weights a block: f16 scale d, 16 bytes of 4-bit q; w = d * (q - 8).
    Q4_0,
    /// 32 weights a block: f16 scale d, f16 min m, 16 bytes of 4-bit q; w = d * q + m.
    Q4_1,
    /// 32 weights a block: f16 scale d, 32 int8 q; w = d * q.
    Q8_0,
    /// A type webtune recognises by number but cannot dequantize.
    Other(u32),
}

/// What the error message lists as readable.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// ggml's own name for the type, for messages.
    pub fn name(self) -> String {
        let known = match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Other(id) => {
                let name = match id {
                    6 => "Q5_0",
                    7 => "Q5_1",
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    12 => "Q4_K",
                    13 => "Q5_K",
                    14 => "Q6_K",
                    15 => "Q8_K",
                    16..=23 => "an IQ type",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    _ => "an unknown type",
                };
                return format!("{name} (ggml type {id})");
            }
        };
        known.to_string()
    }

    /// (weights per block, bytes per block), or None for types webtune cannot read.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            Self::Other(_) => None,
        }
    }

    /// Bytes taken by `n` weights, if `n` is a whole number of blocks.
    pub fn byte_len(self, n: usize) -> Option<usize> {
        let (per_block, bytes) = self.block_layout()?;
        if !n.is_multiple_of(per_block) {
            return None;
        }
        (n / per_block).checked_mul(bytes)
    }

    /// Dequantizes `bytes` (exactly `byte_len(n)` of them) into f32.
    pub fn dequantize(self, bytes: &[u8], out: &mut Vec<f32>) {
        let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
        let half = |b: &[u8]| f16::from_bits(le16(b)).to_f32();
        match self {
            Self::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Self::F16 => out.extend(bytes.chunks_exact(2).map(half)),
            Self::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_bits(le16(b)).to_f32()),
            ),
            Self::Q8_0 => {
                for block in bytes.chunks_exact(34) {
                    let d = half(&block[0..2]);
                    out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
                }
            }
            Self::Q4_0 => {
                for block in bytes.chunks_exact(18) {
                    let d = half(&block[0..2]);
                    let qs = &block[2..];
                    // Low nibbles are weights 0..15, high nibbles 16..31.
                    out.extend(qs.iter().map(|&q| d * (f32::from(q & 0x0f) - 8.0)));
                    out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - 8.0)));
                }
            }
            Self::Q4_1 => {
                for block in bytes.chunks_exact(20) {
                    let d = half(&block[0..2]);
                    let m = half(&block[2..4]);
                    let qs = &block[4..];
                    out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0f) + m));
                    out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
                }
            }
            Self::Other(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q4_0_block_follows_ggml_reference() {
        // ggml dequantize_row_q4_0: y[j] = (x & 0xF) - 8, y[j + 16] = (x >> 4) - 8, times d.
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let mut out = Vec::new();
        GgmlType::Q4_0.dequantize(&block, &mut out);
        assert_eq!(out.len(), 32);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 0.5 * ((15 - j) as f32 - 8.0));
        }
    }

    #[test]
    fn q4_1_and_q8_0_blocks_follow_ggml_reference() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend((0u8..16).map(|j| j | (3 << 4)));
        let mut out = Vec::new();
        GgmlType::Q4_1.dequantize(&block, &mut out);
        assert_eq!(out[5], 0.25 * 5.0 - 1.0);
        assert_eq!(out[20], 0.25 * 3.0 - 1.0);

        let mut block = f16_bytes(2.0).to_vec();
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        out.clear();
        GgmlType::Q8_0.dequantize(&block, &mut out);
        assert_eq!(out[0], -32.0);
        assert_eq!(out[31], 30.0);
    }

    #[test]
    fn partial_blocks_have_no_byte_length() {
        assert_eq!(GgmlType::Q4_0.byte_len(64), Some(36));
        assert_eq!(GgmlType::Q4_0.byte_len(33), None);
        assert_eq!(GgmlType::Other(12).byte_len(256), None);
    }
}
