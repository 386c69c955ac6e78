//! The TypeScript types of what the API takes and returns, written into the shipped
//! `webtune.d.ts` next to wasm-bindgen's declarations (whose methods name them through
//! `unchecked_param_type` / `unchecked_return_type` in lib.rs). Each mirrors the serde form of a
//! core type, named in its comment: change both together.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** A run's settings (crate/core/src/spec.rs `RunSpec`): every key optional, an unknown one an error. */
export interface RunSpec {
  data?: {
    seq_len?: number;
    val_fraction?: number;
    val_file?: string | null;
    train_on?: "assistant" | "all";
    malformed?: "skip" | "refuse";
  };
  lora?: {
    r?: number;
    alpha?: number;
    dropout?: number;
    /** Module names (`q_proj`...) or `["all-linear"]`; empty: the family's defaults. */
    targets?: string[];
    use_rslora?: boolean;
    init?: "kaiming" | "gaussian";
  };
  train?: {
    steps?: number;
    batch_size?: number;
    grad_accum?: number;
    eval_every?: number;
    eval_windows?: number;
    checkpoint_every?: number;
    seed?: number;
  };
  optim?: {
    lr?: number;
    warmup_steps?: number | null;
    min_lr_ratio?: number;
    weight_decay?: number;
    max_grad_norm?: number | null;
    adam_beta1?: number;
    adam_beta2?: number;
    adam_epsilon?: number;
  };
  exec?: {
    base_f16?: boolean;
    products?: "widened" | "int16" | null;
    recompute?: boolean;
    log_every?: number | null;
  };
}

/** Where the module computes (crate/wasm/src/backend.rs `BackendInfo`). */
export interface BackendInfo {
  kind: "webgpu" | "cpu";
  adapter: string | null;
  fallback_adapter: boolean;
  reason: string;
  threads: number;
  max_storage_buffer_binding_size: number | null;
  max_buffer_size: number | null;
  f16_weights: boolean;
}

/** The loaded model (crate/core/src/session.rs `ModelInfo`). */
export interface ModelInfo {
  name: string;
  hub_id: string | null;
  parameters: number;
  layers: number;
  hidden_size: number;
  vocab_size: number;
  context_length: number;
  tied_embeddings: boolean;
  chat_template: boolean;
  family: string;
  targets: string[];
  default_targets: string[];
  base_f16: boolean;
}

/** How `addText` reads a file (crate/core/src/data/files.rs `FileOptions`). */
export interface FileOptions {
  format?: "text" | "json-lines" | "json" | "csv" | null;
  columns?: { prompt?: string | null; response?: string | null };
}

/** A file as added (crate/core/src/data/files.rs `TextInfo`). */
export interface TextInfo {
  name: string;
  tokens: number | null;
  skipped: string | null;
  format: "text" | "json-lines" | "json" | "csv";
  record_kinds: ("messages" | "share-gpt" | "prompt-completion" | "alpaca" | "columns")[];
  examples: number | null;
  problems: { line: number; message: string }[];
  problem_count: number;
  columns: string[];
  preview: { text: string; trained: boolean }[];
}

/** What a spec implies (crate/core/src/session.rs `Plan`). */
export interface Plan {
  trainable_parameters: number;
  adapter_bytes_f32: number;
  adapter_bytes_f16: number;
  train_windows: number;
  val_windows: number;
  train_tokens: number;
  val_tokens: number;
  val_documents: string[];
  examples: { train: number; val: number; truncated: number; dropped: number };
  val_prompts: string[];
  tokens_per_step: number;
  epochs: number;
  estimated_secs: number | null;
  memory: MemoryEstimate;
}

/** What a model and a run take in memory, in bytes (crate/core/src/memory.rs `MemoryEstimate`). */
export interface MemoryEstimate {
  weights: number;
  adapter: number;
  activations: number;
  training: number;
  /** 0 for a model already loaded. */
  loading: number;
  peak: number;
  /** The largest single tensor: the embedding, a batch's logits or its attention scores. */
  largest_buffer: number;
  /** What this backend allows (the CPU backend: wasm32's 4 GiB); null: no limit known. */
  limit: number | null;
  /** What one buffer may hold (WebGPU: the adapter's maxStorageBufferBindingSize). */
  buffer_limit: number | null;
  fits: boolean;
  /** When it does not fit: the settings that would, or why none would. */
  advice: string | null;
}

/** One step's report (crate/core/src/train.rs `Progress`); step 0 is the base's evaluation. */
export interface Progress {
  step: number;
  total_steps: number;
  epoch: number;
  tokens_seen: number;
  learned_tokens: number;
  train_loss: number | null;
  val_loss: number | null;
  val_perplexity: number | null;
  lr: number;
  step_secs: number;
  eval_secs: number | null;
  tokens_per_sec: number;
  elapsed_secs: number;
  eta_secs: number;
  next_eval_step: number | null;
  status: "running" | "paused" | "finished" | "stopped";
  checkpoint_due: boolean;
}

/** `generate`'s options (greedy, 48 tokens, by default). */
export interface GenerateOptions {
  chat?: boolean;
  adapted?: boolean;
  max_new_tokens?: number;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  seed?: number;
}

/** An adapter opened to continue or compare (crate/core/src/session.rs `AdapterInfo`). */
export interface AdapterInfo {
  name: string;
  lora: Required<RunSpec>["lora"];
  parameters: number;
  optimizer_state: boolean;
}

/** A preset (crate/core/src/defaults.rs `Preset`). */
export interface Preset {
  name: "quick" | "tiny" | "thorough";
  label: string;
  description: string;
  spec: RunSpec;
  export_f16: boolean;
}

/** The defaults a form starts from (crate/core/src/defaults.rs `Defaults`). */
export interface Defaults {
  spec: RunSpec;
  sample_tokens: number;
  presets: Preset[];
}

/** The settings' limits (crate/core/src/limits.rs `SettingLimits`). */
export interface SettingLimits {
  max_steps: number;
  max_batch_size: number;
  max_grad_accum: number;
  min_seq_len: number;
  max_seq_len: number;
  max_batch_tokens: number;
  max_rank: number;
  max_learning_rate: number;
  max_text_bytes: number;
  max_new_tokens: number;
}

/** A PEFT adapter: its ZIP, and its two files. */
export interface ExportedAdapter {
  zip: Uint8Array<ArrayBuffer>;
  config_json: string;
  safetensors: Uint8Array<ArrayBuffer>;
}

/** A file to save (a llama.cpp adapter, a merged model). */
export interface NamedBytes {
  name: string;
  bytes: Uint8Array<ArrayBuffer>;
}

/** The methods whose last arguments may be left out (merged into the class's declarations). */
export interface WebSession {
  addText(name: string, bytes: Uint8Array | number[], options?: FileOptions): TextInfo;
  generate(
    prompt: string,
    options?: GenerateOptions,
    onText?: ((textSoFar: string) => boolean | void) | null,
  ): Promise<string>;
}
"#;
