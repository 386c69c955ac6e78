//! webtune: fine-tune a language model with LoRA, in the browser on WebGPU or natively, and export
//! the adapter in PEFT format.
//!
//! The pieces, in the order data flows through them:
//! - [`formats`]: model files (GGUF, safetensors) -> f32 tensors under Hugging Face names;
//! - [`model`]: the model families (Llama, GPT-2; each with its config and GGUF names) behind one
//!   boundary, [`model::CausalLM`], built from those tensors, frozen;
//! - [`tokenizer`], [`chat`]: text <-> ids, chat prompts;
//! - [`lora`]: the trainable low-rank branches;
//! - [`spec`]: every setting of a training run, in one type ([`RunSpec`]);
//! - [`train`]: the training loop over a [`data::Dataset`];
//! - [`generate`]: sampling with the KV cache;
//! - [`base_model`]: all of the above loaded from files in one call.

pub mod base_model;
pub mod chat;
pub mod checkpoint;
pub mod data;
pub mod defaults;
pub mod device;
pub mod error;
pub mod formats;
pub mod fs;
pub mod generate;
pub mod kernels;
pub mod limits;
pub mod lora;
pub mod memory;
pub mod model;
pub mod optim;
pub mod recipe;
pub mod rng;
pub mod session;
mod shards;
pub mod spec;
pub mod tokenizer;
pub mod train;

pub use base_model::{BaseModel, NamedFile};
pub use error::{Error, Result};
pub use generate::SamplingConfig;
pub use model::{
    CausalLM, Gpt2Config, Gpt2LMHeadModel, LlamaConfig, LlamaForCausalLM, ModelConfig,
};
pub use spec::RunSpec;
pub use tokenizer::Tokenizer;

/// burn, re-exported so that users name the same version.
pub use burn;
