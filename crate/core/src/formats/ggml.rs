//! ggml tensor types and their dequantization to f32 (the block layouts of ggml's reference code).

use half::{bf16, f16};

/// A ggml tensor type as stored in GGUF files (`ggml_type`; ggml's names).
#[allow(non_camel_case_types)]
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
    /// 32 weights a block: f16 scale d, 32 high bits, 16 bytes of low 4-bit q; w = d * (q - 16).
    Q5_0,
    /// 32 weights a block: f16 d, f16 m, 32 high bits, 16 bytes of low 4-bit q; w = d * q + m.
    Q5_1,
    /// The K-quants: 256 weights a super-block in sub-blocks of 16 or 32, each with its own
    /// scale (and min) quantized against the super-block's f16 scale(s).
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    /// A type webtune recognises by number but cannot dequantize.
    Other(u32),
}

/// What the error message lists as readable.
pub const SUPPORTED: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Weights in a K-quant super-block (ggml's `QK_K`).
const QK_K: usize = 256;

/// Each type webtune reads and its ggml id (`ggml_type`), written once.
const IDS: [(GgmlType, u32); 13] = [
    (GgmlType::F32, 0),
    (GgmlType::F16, 1),
    (GgmlType::Q4_0, 2),
    (GgmlType::Q4_1, 3),
    (GgmlType::Q5_0, 6),
    (GgmlType::Q5_1, 7),
    (GgmlType::Q8_0, 8),
    (GgmlType::Q2_K, 10),
    (GgmlType::Q3_K, 11),
    (GgmlType::Q4_K, 12),
    (GgmlType::Q5_K, 13),
    (GgmlType::Q6_K, 14),
    (GgmlType::BF16, 30),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        IDS.iter()
            .find(|(_, i)| *i == id)
            .map_or(Self::Other(id), |(t, _)| *t)
    }

    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        match self {
            Self::Other(id) => id,
            known => IDS
                .iter()
                .find(|(t, _)| *t == known)
                .map_or(u32::MAX, |(_, id)| *id),
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
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Other(id) => {
                let name = match id {
                    9 => "Q8_1",
                    15 => "Q8_K",
                    16..=23 | 29 => "an IQ type",
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
            Self::Q5_0 => Some((32, 22)),
            Self::Q5_1 => Some((32, 24)),
            Self::Q2_K => Some((QK_K, 84)),
            Self::Q3_K => Some((QK_K, 110)),
            Self::Q4_K => Some((QK_K, 144)),
            Self::Q5_K => Some((QK_K, 176)),
            Self::Q6_K => Some((QK_K, 210)),
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

    /// Dequantizes `bytes` (exactly `byte_len(n)` of them) into f32, as ggml's reference code
    /// (`dequantize_row_*` in ggml-quants.c) does.
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
            Self::Q5_0 | Self::Q5_1 => {
                let (size, with_min) = if self == Self::Q5_0 {
                    (22, false)
                } else {
                    (24, true)
                };
                for block in bytes.chunks_exact(size) {
                    let d = half(&block[0..2]);
                    let (m, rest) = if with_min {
                        (half(&block[2..4]), &block[4..])
                    } else {
                        (0.0, &block[2..])
                    };
                    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    let qs = &rest[4..20];
                    // Weight j's fifth bit is bit j of qh; weight j + 16's is bit j + 16.
                    let q = |j: usize, low: u8, shift: usize| -> f32 {
                        let high = ((qh >> (j + shift)) & 1) as u8;
                        f32::from(low | (high << 4))
                    };
                    let w = |q: f32| if with_min { d * q + m } else { d * (q - 16.0) };
                    out.extend((0..16).map(|j| w(q(j, qs[j] & 0x0f, 0))));
                    out.extend((0..16).map(|j| w(q(j, qs[j] >> 4, 16))));
                }
            }
            Self::Q2_K => bytes.chunks_exact(84).for_each(|b| q2_k(b, out)),
            Self::Q3_K => bytes.chunks_exact(110).for_each(|b| q3_k(b, out)),
            Self::Q4_K => bytes.chunks_exact(144).for_each(|b| q4_k(b, out)),
            Self::Q5_K => bytes.chunks_exact(176).for_each(|b| q5_k(b, out)),
            Self::Q6_K => bytes.chunks_exact(210).for_each(|b| q6_k(b, out)),
            Self::Other(_) => {}
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q2_K: 16 bytes of sub-block scales and mins (4 bits each), 64 bytes of 2-bit q, f16 d, f16
/// dmin. Sub-block of 16 weights k: w = d * scale_k * q - dmin * min_k.
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for half in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for part in [&half[..16], &half[16..]] {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * f32::from(sc & 0x0f), dmin * f32::from(sc >> 4));
                out.extend(part.iter().map(|&q| dl * f32::from((q >> shift) & 3) - ml));
            }
        }
    }
}

/// Q3_K: 32 bytes of high bits, 64 bytes of 2-bit low q, 12 bytes of 6-bit sub-block scales
/// (biased by 32), f16 d. w = d * (scale_k - 32) * (q - 4 where the high bit is clear).
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    // The 16 scales: low 4 bits from bytes 0..8, high 2 bits from bytes 8..12 (ggml's aux words).
    let scales: Vec<i32> = (0..16)
        .map(|k| {
            let low = if k < 8 {
                packed[k] & 0x0f
            } else {
                packed[k - 8] >> 4
            };
            let high = (packed[8 + k % 4] >> (2 * (k / 4))) & 3;
            i32::from(low | (high << 4)) - 32
        })
        .collect();
    let mut is = 0;
    let mut m = 1u8;
    for half in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for (offset, part) in [(0, &half[..16]), (16, &half[16..])] {
                let dl = d * scales[is] as f32;
                is += 1;
                out.extend(part.iter().enumerate().map(|(l, &q)| {
                    let low = i32::from((q >> shift) & 3);
                    let high = if hmask[offset + l] & m != 0 { 0 } else { 4 };
                    dl * (low - high) as f32
                }));
            }
            m <<= 1;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K super-block (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(d), f32::from(m))
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit q. Sub-block
/// of 32 weights k: w = d * scale_k * q - dmin * min_k.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin, scales, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..16], &b[16..144]);
    for (j, q) in qs.chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * j, scales);
        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
        out.extend(q.iter().map(|&q| d1 * f32::from(q & 0x0f) - m1));
        out.extend(q.iter().map(|&q| d2 * f32::from(q >> 4) - m2));
    }
}

/// Q5_K: Q4_K with a fifth bit per weight from 32 bytes of high bits.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (j, ql) in qs.chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * j, scales);
        let (s2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let high = |h: u8, u: u8| if h & u != 0 { 16.0 } else { 0.0 };
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&q, &h)| d1 * (f32::from(q & 0x0f) + high(h, u1)) - m1),
        );
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&q, &h)| d2 * (f32::from(q >> 4) + high(h, u2)) - m2),
        );
    }
}

/// Q6_K: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 sub-block scales, f16 d.
/// w = d * scale_k * (q - 32).
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q = |low: u8, shift: u8| i32::from(low | (((qh[l] >> shift) & 3) << 4)) - 32;
            let scale = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = scale(0) * q(ql[l] & 0x0f, 0) as f32;
            y[l + 32] = scale(2) * q(ql[l + 32] & 0x0f, 2) as f32;
            y[l + 64] = scale(4) * q(ql[l] >> 4, 4) as f32;
            y[l + 96] = scale(6) * q(ql[l + 32] >> 4, 6) as f32;
        }
        out.extend(y);
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
        assert_eq!(GgmlType::Q4_K.byte_len(512), Some(288));
        assert_eq!(GgmlType::Q6_K.byte_len(255), None);
        assert_eq!(GgmlType::Other(16).byte_len(256), None);
    }
}
