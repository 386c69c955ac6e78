//! Model families. Each file reads like its Hugging Face module tree; HF tensor names live in that
//! file (its loader reads them, `hf_tensors` writes them back).

pub mod kv_cache;
pub mod llama;
pub mod rope;

pub use kv_cache::KvCache;
pub use llama::LlamaForCausalLM;
