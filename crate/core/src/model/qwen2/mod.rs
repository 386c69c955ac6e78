//! The Qwen2 family (`Qwen2ForCausalLM` in transformers: Qwen2, Qwen2.5): Llama's decoder with
//! a bias on the q, k and v projections, its embeddings usually tied. The model is the Llama
//! family's module tree ([`LlamaForCausalLM`], the same HF tensor names, LoRA targets and PEFT
//! keys); what is Qwen2's own is here: its `config.json` ([`config`]) and its GGUF files
//! (`general.architecture = qwen2`, whose q/k rows llama.cpp's converter leaves in HF's order).

pub mod config;

pub use config::Qwen2Config;

/// A Qwen2 model: the Llama family's module tree, built with Qwen2's biases.
pub type Qwen2ForCausalLM = super::LlamaForCausalLM;
