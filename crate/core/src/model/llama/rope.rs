//! Rotary position embeddings as transformers' Llama applies them (`rotate_half`: the two halves
//! of each head are rotated as pairs (i, i + head_dim/2), not interleaved pairs), with the
//! frequency scalings the family's models use. The rotation itself is [`crate::kernels::rope`].

use burn::tensor::{Device, Tensor, TensorData};

/// The rotary frequencies of a model: one per pair of a head's dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
}

/// Llama 3's frequency scaling (`rope_type: "llama3"`): long wavelengths slowed by `factor`,
/// short ones kept, those between interpolated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

impl Rope {
    /// Unscaled: 1 / theta^(2i / head_dim) for i < head_dim / 2.
    pub fn new(theta: f64, head_dim: usize) -> Self {
        // transformers computes the frequencies and the angles in f32; doing the same keeps
        // positions far into the context within f32 rounding of the reference.
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / (theta.powf((2 * i) as f64 / head_dim as f64) as f32))
            .collect();
        Self { inv_freq }
    }

    /// With Llama 3's scaling, as transformers' `_compute_llama3_parameters` computes it (in f32).
    pub fn llama3(self, s: &Llama3Scaling) -> Self {
        let factor = s.factor as f32;
        let (low, high) = (s.low_freq_factor as f32, s.high_freq_factor as f32);
        let old = s.original_max_position_embeddings as f32;
        let (low_wavelen, high_wavelen) = (old / low, old / high);
        let inv_freq = self
            .inv_freq
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect();
        Self { inv_freq }
    }

    /// Divided by llama.cpp's per-frequency factors (a GGUF file's `rope_freqs.weight`, which its
    /// converter writes for Llama 3's scaling): what llama.cpp rotates by.
    pub fn with_freq_factors(self, factors: &[f32]) -> Self {
        let inv_freq = self
            .inv_freq
            .iter()
            .zip(factors)
            .map(|(f, d)| f / d)
            .collect();
        Self { inv_freq }
    }

    /// cos and sin tables for positions `start..start + len`.
    ///
    /// # Shapes
    /// - returns `([len, head_dim], [len, head_dim])`
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let head_dim = 2 * self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for pos in start..start + len {
            for _ in 0..2 {
                for f in &self.inv_freq {
                    let angle = pos as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let make =
            |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [len, head_dim]), device);
        (make(cos), make(sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_short_wavelengths_and_slows_long_ones() {
        // Llama 3.2's: theta 5e5, head_dim 64, factor 32, 1, 4, 8192.
        let base = Rope::new(500_000.0, 64);
        let s = Llama3Scaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let scaled = base.clone().llama3(&s);
        assert_eq!(
            scaled.inv_freq[0], base.inv_freq[0],
            "the shortest wavelength is kept"
        );
        assert_eq!(
            scaled.inv_freq[31],
            base.inv_freq[31] / 32.0,
            "the longest is slowed"
        );
        // llama.cpp's factors (convert_hf_to_gguf.py) give the same frequencies.
        let factors: Vec<f32> = base
            .inv_freq
            .iter()
            .zip(&scaled.inv_freq)
            .map(|(f, g)| f / g)
            .collect();
        let again = base.with_freq_factors(&factors);
        for (a, b) in again.inv_freq.iter().zip(&scaled.inv_freq) {
            assert!((a - b).abs() <= 1e-6 * b.abs());
        }
    }
}
