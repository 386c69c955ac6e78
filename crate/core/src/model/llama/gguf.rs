//! The Llama family in GGUF: llama.cpp's tensor names for `general.architecture = llama`, and its
//! rotary row permutation of q/k (`LlamaModel.permute` in `convert_hf_to_gguf.py`).

use crate::formats::HostTensor;
use crate::formats::gguf::GgufTensorMap;

/// HF name -> GGUF name for the llama family (llama.cpp's `tensor_mapping`).
pub fn gguf_name(hf: &str) -> Option<String> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gguf = match module {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}"))
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

/// The llama GGUF layout of a model with these head counts.
pub struct LlamaGgufMap {
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

impl LlamaGgufMap {
    /// The heads whose rotary halves llama.cpp interleaves in the rows of `hf`, if any.
    fn permuted_heads(&self, hf: &str) -> Option<usize> {
        if hf.ends_with("self_attn.q_proj.weight") {
            Some(self.num_heads)
        } else if hf.ends_with("self_attn.k_proj.weight") {
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
    }
}
