//! What a model and a run need in memory, estimated before anything is allocated, and whether
//! that fits where they run: the page's wasm32 module addresses 4 GiB in all, and running out
//! there kills the module mid-load or mid-step. Loading a model holds its file and its weights at
//! once; training holds the weights, the LoRA branch with its gradients and AdamW's moments, the
//! activations the backward pass reads, and the logits.
//!
//! The activation term is the decoder layer's saved tensors counted per token (the norms'
//! outputs, q/k/v before and after RoPE, the attention output and residuals: ~6 of the hidden
//! size; the MLP's gate, up, activation and product: 4 of the intermediate size; the attention
//! scores: 1.5 per head and key). It is checked against measured peaks by the benchmark
//! (`tests/bench/run.sh`: "est." beside each peak, docs/benchmarks.md) and errs high.

use serde::Serialize;

use crate::error::Result;
use crate::formats::gguf::GgufFile;
use crate::model::ModelConfig;
use crate::spec::RunSpec;

/// What wasm32 addresses: the page's module can never hold more.
pub const WASM32_BYTES: u64 = 4 << 30;

/// What the program, its tokenizer, the texts and the allocator's slack take besides the model
/// and the run (the tiny model's whole run peaks at ~25 MiB in the page; the CLI loading a 1.5 B
/// model measured ~80 MiB over the file and the weights).
const OVERHEAD_BYTES: u64 = 96 << 20;

/// The sizes of a model that decide its memory ([`ModelConfig`]'s, whichever the family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    pub parameters: u64,
    pub layers: u64,
    pub hidden: u64,
    pub intermediate: u64,
    pub heads: u64,
    pub vocab: u64,
}

impl ModelShape {
    pub fn of(config: &ModelConfig) -> Self {
        Self {
            parameters: config.num_parameters() as u64,
            layers: config.num_layers() as u64,
            hidden: config.hidden_size() as u64,
            intermediate: config.intermediate_size() as u64,
            heads: config.attention_heads() as u64,
            vocab: config.vocab_size() as u64,
        }
    }

    /// A GGUF model's shape from the file's first bytes (`head`; the file is `file_len` long):
    /// a header longer than `head` is [`crate::Error::Truncated`], naming the length it needs.
    pub fn from_gguf_head(file_name: &str, head: Vec<u8>, file_len: u64) -> Result<Self> {
        let gguf = GgufFile::parse_header(file_name, head, file_len)?;
        Ok(Self::of(&ModelConfig::from_gguf(&gguf)?))
    }

    /// A Hugging Face model's shape from its `config.json`.
    pub fn from_config_json(file_name: &str, json: &str) -> Result<Self> {
        Ok(Self::of(&ModelConfig::from_json(file_name, json)?))
    }
}

/// What the place a model runs allows: memory in all (the page's CPU backend: wasm32's 4 GiB),
/// and bytes in one buffer (WebGPU: the adapter's `maxStorageBufferBindingSize`; the embedding,
/// the logits and the attention scores are each one buffer). None: no limit known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    pub total: Option<u64>,
    pub buffer: Option<u64>,
}

/// What a run needs, by part (bytes), and whether it fits the limit it runs under.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryEstimate {
    /// The frozen base (f32, or f16 with `exec.base_f16`).
    pub weights: u64,
    /// LoRA's A and B, their gradients and AdamW's two moments, in f32.
    pub adapter: u64,
    /// What the backward pass keeps (every layer's, or each layer's input with recomputation),
    /// and the logits.
    pub activations: u64,
    /// The training peak: weights + adapter + activations + the module's own.
    pub training: u64,
    /// The loading peak, where the model's file is held while its weights are made (0 when no
    /// file size was given: the model is loaded already).
    pub loading: u64,
    /// The larger of the two.
    pub peak: u64,
    /// The largest single tensor: the embedding, a batch's logits or its attention scores.
    pub largest_buffer: u64,
    /// What the place it runs allows (None: no limit known, e.g. natively).
    pub limit: Option<u64>,
    /// What one buffer may hold there (WebGPU), when known.
    pub buffer_limit: Option<u64>,
    pub fits: bool,
    /// When it does not fit: the settings that would, or why none would.
    pub advice: Option<String>,
}

/// The run's sizes that the estimate reads.
#[derive(Debug, Clone, Copy)]
struct RunShape {
    batch: u64,
    seq_len: u64,
    lora_parameters: u64,
    base_f16: bool,
    recompute: bool,
}

fn part(model: &ModelShape, run: &RunShape, file_bytes: Option<u64>) -> MemoryEstimate {
    let m = model;
    let weights = m
        .parameters
        .saturating_mul(if run.base_f16 { 2 } else { 4 });
    let adapter = run.lora_parameters.saturating_mul(16);
    let tokens = run.batch.saturating_mul(run.seq_len);
    // f32 values a token keeps for one layer's backward pass.
    let per_token_layer = (6 * m.hidden)
        .saturating_add(4 * m.intermediate)
        .saturating_add(m.heads.saturating_mul(run.seq_len).saturating_mul(3) / 2);
    let layer = tokens.saturating_mul(per_token_layer).saturating_mul(4);
    let kept = if run.recompute {
        // Each layer's input, and one layer's activations while it is recomputed.
        tokens
            .saturating_mul(m.layers)
            .saturating_mul(m.hidden)
            .saturating_mul(4)
            .saturating_add(layer)
    } else {
        layer.saturating_mul(m.layers)
    };
    // The LM head's loss: the batch's logits whole, or (the CPU's fused loss, a block of rows at
    // a time) the head's weight widened to f32 for its products, whichever is larger.
    let logits = tokens.saturating_mul(m.vocab).saturating_mul(4);
    let head_f32 = m.vocab.saturating_mul(m.hidden).saturating_mul(4);
    let activations = kept.saturating_add(logits.max(head_f32));
    let training = weights
        .saturating_add(adapter)
        .saturating_add(activations)
        .saturating_add(OVERHEAD_BYTES);
    // The file, and the weights made from it: all of them and the last matrix dequantized to
    // f32 on its way, or the embedding (read first, the largest) in f32 and as the base keeps it.
    let embedding_stored = m
        .vocab
        .saturating_mul(m.hidden)
        .saturating_mul(if run.base_f16 { 2 } else { 4 });
    let layer_matrix_f32 = m.hidden.saturating_mul(m.intermediate).saturating_mul(4);
    let loading = file_bytes.map_or(0, |file| {
        let made = weights
            .saturating_add(layer_matrix_f32)
            .max(head_f32.saturating_add(embedding_stored));
        file.saturating_add(made).saturating_add(OVERHEAD_BYTES)
    });
    let scores = tokens
        .saturating_mul(m.heads)
        .saturating_mul(run.seq_len)
        .saturating_mul(4);
    MemoryEstimate {
        weights,
        adapter,
        activations,
        training,
        loading,
        peak: training.max(loading),
        largest_buffer: embedding_stored.max(logits).max(scores),
        limit: None,
        buffer_limit: None,
        fits: true,
        advice: None,
    }
}

/// A size for people: "1.3 GiB", "310 MiB".
pub fn human(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// The estimate for `spec` on `model`, checked against `limits`; `file_bytes`: the model's file(s),
/// when it is still to be loaded. `lora_parameters`: the run's trainable parameters (None: the
/// most `spec.lora` could give this model, for before it is loaded).
///
/// When it does not fit, `advice` names the first of the lighter settings that does, in the order
/// a person gives up least: 16-bit weights, "Save memory" (recomputation), a smaller batch (its
/// steps are then averaged over as many micro-batches with `train.grad_accum`), a shorter
/// sequence; or says that no setting fits.
pub fn estimate(
    model: &ModelShape,
    spec: &RunSpec,
    lora_parameters: Option<u64>,
    file_bytes: Option<u64>,
    limits: MemoryLimits,
) -> MemoryEstimate {
    let lora_parameters = lora_parameters.unwrap_or_else(|| {
        // At most every projection of every layer: r x (fan-in + fan-out) each.
        let r = spec.lora.r as u64;
        let per_layer = 4 * r * 2 * model.hidden + 3 * r * (model.hidden + model.intermediate);
        model.layers.saturating_mul(per_layer)
    });
    let run = RunShape {
        batch: spec.train.batch_size as u64,
        seq_len: spec.data.seq_len as u64,
        lora_parameters,
        base_f16: spec.exec.base_f16,
        recompute: spec.exec.recompute,
    };
    let mut est = part(model, &run, file_bytes);
    est.limit = limits.total;
    est.buffer_limit = limits.buffer;
    let fits = |e: &MemoryEstimate| {
        limits.total.is_none_or(|l| e.peak <= l)
            && limits.buffer.is_none_or(|l| e.largest_buffer <= l)
    };
    est.fits = fits(&est);
    if est.fits {
        return est;
    }

    let mut tries: Vec<(RunShape, String)> = Vec::new();
    let mut r = run;
    let mut said: Vec<String> = Vec::new();
    if !r.base_f16 {
        r.base_f16 = true;
        said.push("16-bit weights".into());
        tries.push((r, said.join(", ")));
    }
    if !r.recompute {
        r.recompute = true;
        said.push("\"Save memory\"".into());
        tries.push((r, said.join(", ")));
    }
    while r.batch > 1 {
        r.batch /= 2;
        let grad_accum = spec.train.batch_size as u64 / r.batch * spec.train.grad_accum as u64;
        let mut s = said.clone();
        s.push(format!("batch {} (grad_accum {grad_accum})", r.batch));
        tries.push((r, s.join(", ")));
    }
    if r.batch == 1 {
        said.push("batch 1".into());
    }
    while r.seq_len > 64 {
        r.seq_len /= 2;
        let mut s = said.clone();
        s.push(format!("sequence length {}", r.seq_len));
        tries.push((r, s.join(", ")));
    }
    let needs = match limits.total {
        Some(limit) if est.peak > limit => format!(
            "needs ~{} ({} to load, {} to train: weights {}, activations {}), more than the {} \
             available here",
            human(est.peak),
            human(est.loading),
            human(est.training),
            human(est.weights),
            human(est.activations),
            human(limit)
        ),
        _ => format!(
            "needs a buffer of {} (the embedding, the logits or the attention scores), more \
             than the {} this GPU allows in one",
            human(est.largest_buffer),
            human(limits.buffer.unwrap_or_default())
        ),
    };
    let lighter = tries
        .iter()
        .map(|(r, what)| (part(model, r, file_bytes), what))
        .find(|(e, _)| fits(e));
    est.advice = Some(match lighter {
        Some((e, what)) => format!("{needs}: with {what} it needs ~{}", human(e.peak)),
        None => {
            let least = part(model, &r, file_bytes);
            format!(
                "{needs}; even with {} and sequence length {} it needs ~{} (a buffer of {}): \
                 this model is too large to train here (the command line runs it natively)",
                said.join(", "),
                r.seq_len,
                human(least.peak),
                human(least.largest_buffer)
            )
        }
    });
    est
}

#[cfg(test)]
mod tests {
    use super::*;

    // SmolLM2-135M's sizes.
    fn smollm2() -> ModelShape {
        ModelShape {
            parameters: 134_515_008,
            layers: 30,
            hidden: 576,
            intermediate: 1536,
            heads: 9,
            vocab: 49152,
        }
    }

    // Qwen2.5-7B's sizes.
    fn qwen_7b() -> ModelShape {
        ModelShape {
            parameters: 7_615_616_512,
            layers: 28,
            hidden: 3584,
            intermediate: 18944,
            heads: 28,
            vocab: 152_064,
        }
    }

    const WASM: MemoryLimits = MemoryLimits {
        total: Some(WASM32_BYTES),
        buffer: None,
    };

    #[test]
    fn each_lighter_setting_needs_less() {
        let spec = RunSpec::default();
        let base = estimate(&smollm2(), &spec, None, None, MemoryLimits::default());
        let mut f16 = spec.clone();
        f16.exec.base_f16 = true;
        let f16 = estimate(&smollm2(), &f16, None, None, MemoryLimits::default());
        assert_eq!(f16.weights * 2, base.weights);
        let mut rec = spec.clone();
        rec.exec.recompute = true;
        let rec = estimate(&smollm2(), &rec, None, None, MemoryLimits::default());
        assert!(rec.activations * 3 < base.activations, "{rec:?} {base:?}");
        let mut half = spec.clone();
        half.train.batch_size /= 2;
        let half = estimate(&smollm2(), &half, None, None, MemoryLimits::default());
        assert!(
            half.activations * 3 / 2 < base.activations,
            "{half:?} {base:?}"
        );
        assert!(base.fits && base.limit.is_none() && base.advice.is_none());
    }

    #[test]
    fn what_does_not_fit_says_what_would() {
        // SmolLM2 with a batch of 64 windows of 512 tokens: not in 4 GiB, but lighter it is.
        let mut spec = RunSpec::default();
        spec.train.batch_size = 64;
        spec.data.seq_len = 512;
        let e = estimate(&smollm2(), &spec, None, Some(270 << 20), WASM);
        assert!(!e.fits && e.peak > WASM32_BYTES, "{e:?}");
        let advice = e.advice.unwrap();
        assert!(advice.contains("more than the 4.0 GiB"), "{advice}");
        assert!(
            advice.contains("with 16-bit weights, \"Save memory\", batch"),
            "{advice}"
        );
        // The advice is the first of the lighter settings that fits: the one before it does not.
        assert!(advice.contains("grad_accum"), "{advice}");

        // A 7B model: nothing fits; the message says so.
        let e = estimate(&qwen_7b(), &RunSpec::default(), None, Some(4 << 30), WASM);
        let advice = e.advice.unwrap();
        assert!(advice.contains("too large to train here"), "{advice}");
        // The default run on SmolLM2 fits.
        let e = estimate(&smollm2(), &RunSpec::default(), None, Some(270 << 20), WASM);
        assert!(e.fits && e.advice.is_none(), "{e:?}");
    }

    #[test]
    fn a_gpu_buffer_limit_is_checked_by_the_largest_tensor() {
        // SmolLM2's embedding in f32 is 108 MiB; the default batch's logits 96 MiB.
        let gpu = |mib: u64| MemoryLimits {
            total: None,
            buffer: Some(mib << 20),
        };
        let spec = RunSpec::default();
        let e = estimate(&smollm2(), &spec, None, None, gpu(256));
        assert!(e.fits, "{e:?}");
        assert_eq!(e.largest_buffer, 49152 * 576 * 4);
        // Under the embedding: 16-bit weights halve it (54 MiB), and the logits (96 MiB) still
        // need a smaller batch.
        let e = estimate(&smollm2(), &spec, None, None, gpu(64));
        let advice = e.advice.unwrap();
        assert!(
            advice.contains("more than the 64 MiB this GPU allows in one"),
            "{advice}"
        );
        assert!(
            advice.contains("with 16-bit weights, \"Save memory\", batch 2"),
            "{advice}"
        );
    }
}
