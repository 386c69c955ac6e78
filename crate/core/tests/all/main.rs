//! The core's integration tests, in one binary: each module a file of its own, linked once
//! (each binary links burn's CPU and GPU stacks: one link instead of one per file).
#![cfg(not(target_arch = "wasm32"))]

mod common;

mod chat_data;
mod families_golden;
mod fuzz_smoke;
mod ggml_quants;
mod gguf_lora;
mod gpt2_golden;
mod hostile;
mod int16_products;
mod llama_golden;
mod lora_golden;
mod malformed;
mod memory;
mod merged;
mod smollm2;
mod tokenizer;
mod training;
