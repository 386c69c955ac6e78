//! Rotary position embeddings as transformers' Llama applies them (`rotate_half`: the two halves
//! of each head are rotated as pairs (i, i + head_dim/2), not interleaved pairs). The rotation
//! itself is [`crate::kernels::rope`].

use burn::tensor::{Device, Tensor, TensorData};

/// cos and sin tables for positions `start..start + len`.
///
/// # Shapes
/// - returns `([len, head_dim], [len, head_dim])`
pub fn tables(
    theta: f64,
    head_dim: usize,
    start: usize,
    len: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    // transformers computes inv_freq and the angles in f32; doing the same keeps positions far
    // into the context within f32 rounding of the reference.
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta.powf((2 * i) as f64 / head_dim as f64) as f32))
        .collect();
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for pos in start..start + len {
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let make = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [len, head_dim]), device);
    (make(cos), make(sin))
}
