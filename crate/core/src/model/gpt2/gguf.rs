//! The GPT-2 family in GGUF: llama.cpp's tensor names for `general.architecture = gpt2`. Its
//! converter (`GPT2Model` in `convert_hf_to_gguf.py`) transposes the `Conv1D` weights to the
//! usual `[out, in]`, drops the `attn.bias` buffers and writes the tied head as `output.weight`.

use crate::formats::HostTensor;
use crate::formats::gguf::GgufTensorMap;

/// HF name (`transformer.` prefix) -> GGUF name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let simple = match hf {
        "transformer.wte.weight" => Some("token_embd.weight"),
        "transformer.wpe.weight" => Some("position_embd.weight"),
        "transformer.ln_f.weight" => Some("output_norm.weight"),
        "transformer.ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = hf.strip_prefix("transformer.h.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = module.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let gguf = match module {
        "ln_1" => "attn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" => "attn_output",
        "ln_2" => "ffn_norm",
        "mlp.c_fc" => "ffn_up",
        "mlp.c_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// A `Conv1D` weight: HF stores it `[in, out]`, GGUF (like every linear weight there) `[out, in]`.
fn is_conv1d_weight(hf: &str) -> bool {
    hf.starts_with("transformer.h.")
        && [".c_attn.weight", ".c_proj.weight", ".c_fc.weight"]
            .iter()
            .any(|s| hf.ends_with(s))
}

/// The GPT-2 GGUF layout.
pub struct Gpt2GgufMap;

impl Gpt2GgufMap {
    fn transposed(hf: &str, t: HostTensor) -> Result<HostTensor, String> {
        if !is_conv1d_weight(hf) {
            return Ok(t);
        }
        if t.shape.len() != 2 {
            return Err(format!("has shape {:?}, not a matrix", t.shape));
        }
        Ok(t.transposed())
    }
}

impl GgufTensorMap for Gpt2GgufMap {
    fn gguf_name(&self, hf: &str) -> Option<String> {
        gguf_name(hf)
    }

    fn hf_shape(&self, hf: &str, gguf_shape: &[usize]) -> Vec<usize> {
        let mut shape = gguf_shape.to_vec();
        if is_conv1d_weight(hf) {
            shape.reverse();
        }
        shape
    }

    fn gguf_to_hf(&self, hf: &str, t: HostTensor) -> Result<HostTensor, String> {
        Self::transposed(hf, t)
    }

    fn hf_to_gguf(&self, hf: &str, t: HostTensor) -> Result<HostTensor, String> {
        Self::transposed(hf, t)
    }

    fn lora_b_to_gguf(&self, _hf: &str, b: HostTensor) -> Result<HostTensor, String> {
        // PEFT's B is `[d_out, r]` whatever the layer's storage; the GGUF weight's rows are its
        // outputs in the same order.
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_llama_cpp_names() {
        for (hf, gguf) in [
            ("transformer.wte.weight", "token_embd.weight"),
            ("transformer.h.3.attn.c_attn.bias", "blk.3.attn_qkv.bias"),
            ("transformer.h.0.mlp.c_proj.weight", "blk.0.ffn_down.weight"),
            ("transformer.h.11.ln_2.weight", "blk.11.ffn_norm.weight"),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_name("transformer.h.0.attn.bias"), None);
        assert!(is_conv1d_weight("transformer.h.0.attn.c_proj.weight"));
        assert!(!is_conv1d_weight("transformer.h.0.attn.c_proj.bias"));
    }
}
