//! Model file formats. Each reader turns a file into [`Checkpoint`]: f32 tensors under their
//! Hugging Face names and in Hugging Face layout, so that the model code knows one naming only.

pub mod ggml;
pub mod gguf;
pub mod gguf_lora;
pub mod gguf_writer;
pub mod merged;
pub mod peft;
pub mod safetensors;
pub mod zip;

use crate::error::Result;

/// A tensor in host memory, row-major, dequantized to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Whether every value is finite (no NaN, no infinity).
    /// Whether every value survives a conversion to f16 (is within its finite range): checked
    /// on what is written in f16, after which a value beyond it would be infinite.
    pub fn fits_f16(&self) -> bool {
        self.data.iter().all(|x| x.abs() <= 65_504.0)
    }

    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }

    /// The transpose of a 2-D tensor (HF's [out, in] to burn's [in, out]).
    pub fn transposed(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        HostTensor::new(vec![cols, rows], data)
    }
}

/// A set of named tensors under Hugging Face names (`model.layers.0.self_attn.q_proj.weight`).
pub trait Checkpoint {
    /// The file name to show in messages.
    fn file_name(&self) -> &str;
    /// The shape of a tensor, in HF layout, if the checkpoint has it.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// How to name the tensor in messages: the name as the file spells it.
    fn source_name(&self, hf_name: &str) -> String {
        hf_name.to_string()
    }
    /// The tensor dequantized to f32 in HF layout.
    fn load(&self, name: &str) -> Result<HostTensor>;

    /// [`Self::load`] of a tensor that must have `shape`: a missing tensor or another shape is
    /// an error naming the file and the tensor, before anything is read.
    fn load_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let found = self
            .shape(name)
            .ok_or_else(|| crate::Error::MissingTensor {
                file: self.file_name().to_string(),
                tensor: self.source_name(name),
            })?;
        if found != shape {
            return Err(crate::Error::ShapeMismatch {
                file: self.file_name().to_string(),
                tensor: self.source_name(name),
                expected: shape.to_vec(),
                found,
            });
        }
        let t = self.load(name)?;
        // A model's weights are finite: a NaN or an infinity would surface later as a NaN loss,
        // blamed on the run's settings. Named here, where it is read.
        if !t.is_finite() {
            return Err(crate::Error::format(
                self.file_name(),
                format!(
                    "tensor `{}` holds NaN or infinite values: the model file is broken",
                    self.source_name(name)
                ),
            ));
        }
        Ok(t)
    }
}
