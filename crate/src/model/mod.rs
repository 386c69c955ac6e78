//! Model families. Each file reads like its Hugging Face module tree; HF tensor names are spelled
//! once, in that file's loader.

pub mod kv_cache;
pub mod llama;
pub mod rope;

pub use kv_cache::KvCache;
pub use llama::LlamaForCausalLM;
