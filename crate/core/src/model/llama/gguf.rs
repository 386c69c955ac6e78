//! The Llama family in GGUF: llama.cpp's tensor names for `general.architecture = llama`, and its
//! rotary row permutation of q/k (`LlamaModel.permute` in `convert_hf_to_gguf.py`).

use crate::formats::HostTensor;
use crate::formats::gguf::GgufTensorMap;

/// HF name -> GGUF name for the llama family (llama.cpp's `tensor_mapping`), from the family's
/// one table of names ([`super::names`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    use super::names::{LAYER, Name, TOP};
    if hf == super::ROPE_FREQS {
        return Some(hf.to_string());
    }
    let (module, kind) = hf.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    if let Some((_, gguf)) = TOP.iter().find(|(h, _)| *h == module) {
        return Some(format!("{gguf}.{kind}"));
    }
    let rest = module.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, gguf): &Name = LAYER.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// Undoes llama.cpp's rotary row permutation of q/k weights (`LlamaModel.permute` in
/// `convert_hf_to_gguf.py`), giving back HF's layout.
///
/// llama.cpp stores HF row (head h, half s, index j) at row (h, j, s): it interleaves the two
/// rotary halves of each head. So HF row `h*hd + s*hd/2 + j` is GGUF row `h*hd + 2*j + s`.
pub fn unpermute_rows(t: &HostTensor, n_heads: usize) -> Option<HostTensor> {
    move_rows(t, n_heads, |hf, gguf| (gguf, hf))
}

/// llama.cpp's rotary row permutation of a q/k weight (HF layout -> GGUF layout): the inverse of
/// [`unpermute_rows`], for writing GGUF files.
pub fn permute_rows(t: &HostTensor, n_heads: usize) -> Option<HostTensor> {
    move_rows(t, n_heads, |hf, gguf| (hf, gguf))
}

/// Copies every row between its HF index and its GGUF index; `from_to(hf, gguf)` says which is
/// the source and which the destination.
fn move_rows(
    t: &HostTensor,
    n_heads: usize,
    from_to: impl Fn(usize, usize) -> (usize, usize),
) -> Option<HostTensor> {
    let (rows, cols) = (*t.shape.first()?, t.shape.get(1).copied().unwrap_or(1));
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        return None;
    }
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut data = vec![0.0; t.data.len()];
    for h in 0..n_heads {
        for s in 0..2 {
            for j in 0..half {
                let (src, dst) = from_to(h * hd + s * half + j, h * hd + 2 * j + s);
                data[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(HostTensor::new(t.shape.clone(), data))
}

/// The GGUF layout of a model of the family with these head counts.
pub struct LlamaGgufMap {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Whether q's and k's rows are in llama.cpp's rotary order: its converter permutes them for
    /// `llama`, not for the families built like it (`qwen2`).
    pub permuted: bool,
}

impl LlamaGgufMap {
    /// The heads whose rotary halves llama.cpp interleaves in the rows of `hf` (a weight or a
    /// bias of q or k), if any.
    fn permuted_heads(&self, hf: &str) -> Option<usize> {
        let (module, _) = hf.rsplit_once('.')?;
        if !self.permuted {
            None
        } else if module.ends_with(super::names::Q.0) {
            Some(self.num_heads)
        } else if module.ends_with(super::names::K.0) {
            Some(self.num_kv_heads)
        } else {
            None
        }
    }

    fn rows(
        &self,
        hf: &str,
        t: HostTensor,
        mover: fn(&HostTensor, usize) -> Option<HostTensor>,
    ) -> Result<HostTensor, String> {
        match self.permuted_heads(hf) {
            None => Ok(t),
            Some(n) => mover(&t, n).ok_or_else(|| {
                format!(
                    "has {} rows, not a multiple of 2 x {n} heads",
                    t.shape.first().copied().unwrap_or(0)
                )
            }),
        }
    }
}

impl GgufTensorMap for LlamaGgufMap {
    fn gguf_name(&self, hf: &str) -> Option<String> {
        gguf_name(hf)
    }

    fn hf_shape(&self, _hf: &str, gguf_shape: &[usize]) -> Vec<usize> {
        gguf_shape.to_vec()
    }

    fn gguf_to_hf(&self, hf: &str, t: HostTensor) -> Result<HostTensor, String> {
        self.rows(hf, t, unpermute_rows)
    }

    fn hf_to_gguf(&self, hf: &str, t: HostTensor) -> Result<HostTensor, String> {
        self.rows(hf, t, permute_rows)
    }

    fn lora_b_to_gguf(&self, hf: &str, b: HostTensor) -> Result<HostTensor, String> {
        // B's rows are the weight's output rows: they move as the weight's rows do.
        self.rows(hf, b, permute_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (n_head, rows, cols) = (2, 8, 3);
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let half = rows / n_head / 2;
        let mut permuted = vec![0.0; hf.len()];
        for h in 0..n_head {
            for s in 0..2 {
                for j in 0..half {
                    // source index (h, s, j) goes to (h, j, s)
                    let src = (h * 2 + s) * half + j;
                    let dst = (h * half + j) * 2 + s;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let t = HostTensor::new(vec![rows, cols], permuted);
        assert_eq!(unpermute_rows(&t, n_head).unwrap().data, hf);
        let back = permute_rows(&HostTensor::new(vec![rows, cols], hf.clone()), n_head).unwrap();
        assert_eq!(back.data, t.data);
    }

    #[test]
    fn hf_names_map_to_gguf_names() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.o_proj.weight").as_deref(),
            Some("blk.12.attn_output.weight")
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_proj.bias").as_deref(),
            Some("blk.3.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.norm.weight").as_deref(),
            Some("output_norm.weight")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
    }

    #[test]
    fn the_lora_targets_are_the_projections_short_names() {
        let shorts: Vec<&str> = super::super::names::PROJECTIONS
            .iter()
            .map(|&m| super::super::names::short(m))
            .collect();
        assert_eq!(shorts, super::super::TARGETS);
    }
}
