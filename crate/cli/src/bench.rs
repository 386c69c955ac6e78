//! `webtune bench`: the fixed training and generation workloads of the benchmark
//! (`tests/bench/run.sh` prints the table). Prints one JSON object on stdout.
//!
//! Each figure is a median over several measured steps after warm-up steps; training steps are
//! timed apart from evaluation (the trainer reports both). On a GPU, which reads the loss back
//! only every few steps, it is the mean of the steps after the first read at or after the
//! warm-up (see [`step_figure`]).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use web_time::Instant;
use webtune::Result;
use webtune::generate::{SamplingConfig, generate_blocking};
use webtune::kernels::FrozenProducts;
use webtune::lora::LoraConfig;
use webtune::spec::RunSpec;
use webtune::train::{Control, Trainer};

#[derive(Args)]
pub struct BenchArgs {
    /// A .gguf file, or a folder with config.json, tokenizer.json and safetensors.
    #[arg(long)]
    model: PathBuf,
    /// Text to train on (the same files give the same batches).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Measured optimizer steps.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Steps run first and not measured.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens a window [default: 128, or the model's context if it is shorter]
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value = "q_proj,v_proj", value_delimiter = ',')]
    targets: Vec<String>,
    /// LoRA dropout (the default's).
    #[arg(long, default_value_t = LoraConfig::default().dropout)]
    dropout: f64,
    /// Validation windows of the one evaluation at the end.
    #[arg(long, default_value_t = 16)]
    eval_windows: usize,
    /// Tokens generated (greedy) for the generation figures; 0 skips them.
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    #[arg(long, value_enum, default_value_t = crate::cli::DeviceChoice::Cpu)]
    device: crate::cli::DeviceChoice,
    /// burn's gradient checkpointing (recompute memory-bound activations in the backward pass
    /// instead of keeping them): measures what it saves in memory and costs in time.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Activation recomputation (`exec.recompute`): each decoder layer's forward again
    /// in the backward pass, keeping only its input.
    #[arg(long)]
    recompute: bool,
    /// The frozen base kept in f16 (`exec.base_f16`): half the base's memory.
    #[arg(long)]
    base_f16: bool,
    /// With `--base-f16`: its products in 16-bit integers (`kernels::FrozenProducts::Int16`, the
    /// page's way in wasm) instead of widened to f32: on x86-64 with AVX2 (and AVX512-VNNI)
    /// faster than f32; elsewhere a portable reference, not fast.
    #[arg(long, requires = "base_f16")]
    int16: bool,
    /// Instead of the workloads, time the parts of one training step (forward, loss, backward)
    /// on stderr: where a step's time goes.
    #[arg(long)]
    breakdown: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    /// Where it ran: "CPU", or the GPU's adapter as wgpu names it.
    device: String,
    threads: usize,
    batch: usize,
    seq_len: usize,
    rank: usize,
    targets: Vec<String>,
    trainable_parameters: usize,
    /// The base model's parameters (its f32 size is 4 bytes each).
    base_parameters: usize,
    /// Activation recomputation on (`--recompute`).
    recompute: bool,
    /// The base kept in f16 (`--base-f16`).
    base_f16: bool,
    /// Its products in 16-bit integers (`--int16`).
    int16: bool,
    load_secs: f64,
    /// Peak resident memory while loading, and while training (MB; Linux only).
    load_peak_mb: Option<f64>,
    train_peak_mb: Option<f64>,
    /// What the core's memory estimate said they would be (MiB; `webtune::memory`).
    load_estimate_mb: f64,
    train_estimate_mb: f64,
    warmup_step_secs: Vec<f64>,
    step_secs: Vec<f64>,
    /// The median step, or the mean where not every step read the loss back (a GPU): see
    /// [`step_figure`], which `step_statistic` names.
    median_step_secs: f64,
    step_statistic: &'static str,
    train_tokens_per_sec: f64,
    eval_windows: usize,
    eval_secs: Option<f64>,
    first_loss: Option<f32>,
    last_loss: Option<f32>,
    generate_base_tokens_per_sec: Option<f64>,
    generate_adapted_tokens_per_sec: Option<f64>,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let device = crate::cli::pick_device(a.device)?.autodiff();
    let device = if a.gradient_checkpointing {
        device.gradient_checkpointing()
    } else {
        device
    };
    let started = Instant::now();
    // The f16 base as it loads: the f32 model never exists whole (peak memory).
    let base = crate::cli::open_model(&a.model, &device, a.base_f16)?;
    let load_secs = started.elapsed().as_secs_f64();
    let load_peak_mb = peak_rss_mb();
    reset_peak_rss();

    let mut spec = RunSpec {
        lora: LoraConfig {
            r: a.rank,
            dropout: a.dropout,
            targets: a.targets.clone(),
            ..LoraConfig::default()
        },
        ..RunSpec::default()
    };
    // The train command's default: the run spec's, or the model's context where it is shorter.
    let default = spec.data.seq_len;
    let seq_len = a.seq_len.unwrap_or_else(|| {
        base.model
            .max_positions()
            .map_or(default, |max| max.min(default))
    });
    spec.data.seq_len = seq_len;
    spec.train.steps = a.warmup + a.steps;
    spec.train.batch_size = a.batch;
    spec.train.eval_every = 0;
    spec.train.eval_windows = a.eval_windows;
    spec.exec.recompute = a.recompute;
    spec.exec.base_f16 = a.base_f16;
    if a.int16 {
        spec.exec.products = Some(FrozenProducts::Int16);
    }
    let base_model = base.model.clone().with_products(spec.products());
    let options = webtune::data::files::FileOptions::default();
    let data = crate::cli::read_data(&a.data, &base, &spec.data, spec.train.seed, &options)?;
    let mut model = base_model.clone();
    webtune::lora::attach(&mut model, &spec.lora, spec.train.seed)?;
    if a.breakdown {
        return breakdown(&model, &data, a.batch, a.steps.max(1));
    }
    let trainable_parameters = model.num_lora_parameters();
    let base_parameters = webtune::burn::module::Module::num_params(&base.model);
    let file_bytes = std::fs::metadata(&a.model)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let estimate = webtune::memory::estimate(
        &webtune::memory::ModelShape::of(&base.config),
        &spec,
        Some(trainable_parameters as u64),
        file_bytes,
        webtune::memory::MemoryLimits::default(),
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let mut trainer = Trainer::new(model, data, spec)?;
    let mut steps = Vec::new();
    let mut losses = Vec::new();
    let mut eval_secs = None;
    trainer.run_blocking(|p| {
        eprintln!(
            "step {}/{}: {:.3} s, loss {:?}",
            p.step, p.total_steps, p.step_secs, p.train_loss
        );
        steps.push(p.step_secs);
        losses.push(p.train_loss);
        eval_secs = eval_secs.or(p.eval_secs);
        Control::Continue
    })?;
    let train_peak_mb = peak_rss_mb();
    let read: Vec<bool> = losses.iter().map(Option::is_some).collect();
    let (warmup, median_step_secs, statistic) = step_figure(&steps, &read, a.warmup);
    let measured = steps.split_off(warmup);

    let (mut gen_base, mut gen_adapted) = (None, None);
    if a.gen_tokens > 0 {
        let prompt = base
            .tokenizer
            .encode("Once upon a time, in a kingdom by the sea,")?;
        let sampling = SamplingConfig::greedy(a.gen_tokens);
        let adapted = burn::module::Module::valid(trainer.model());
        let base_model = burn::module::Module::valid(&base_model);
        for (model, out) in [(&base_model, &mut gen_base), (&adapted, &mut gen_adapted)] {
            let started = Instant::now();
            // No stop tokens: always the same number of tokens.
            let ids = generate_blocking(model, &prompt, &sampling, &[], |_| true)?;
            *out = Some(ids.len() as f64 / started.elapsed().as_secs_f64());
        }
    }

    let report = Report {
        model: base.name.clone(),
        device: device_name(a.device),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        batch: a.batch,
        seq_len,
        rank: a.rank,
        targets: a.targets,
        trainable_parameters,
        base_parameters,
        recompute: a.recompute,
        base_f16: a.base_f16,
        int16: a.int16,
        load_secs,
        load_peak_mb,
        train_peak_mb,
        load_estimate_mb: mib(estimate.loading),
        train_estimate_mb: mib(estimate.training),
        warmup_step_secs: steps,
        median_step_secs,
        step_statistic: statistic,
        train_tokens_per_sec: (a.batch * seq_len) as f64 / median_step_secs,
        step_secs: measured,
        eval_windows: trainer.eval_sample_size(),
        eval_secs,
        first_loss: losses.first().copied().flatten(),
        last_loss: losses.last().copied().flatten(),
        generate_base_tokens_per_sec: gen_base,
        generate_adapted_tokens_per_sec: gen_adapted,
    };
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| webtune::Error::Invalid(e.to_string()))?
    );
    Ok(())
}

use webtune::burn;

fn device_name(choice: crate::cli::DeviceChoice) -> String {
    match choice {
        crate::cli::DeviceChoice::Cpu => "CPU".to_string(),
        #[cfg(feature = "gpu")]
        crate::cli::DeviceChoice::Gpu => {
            webtune::device::gpu_adapter().unwrap_or_else(|| "GPU".to_string())
        }
        #[cfg(not(feature = "gpu"))]
        crate::cli::DeviceChoice::Gpu => "GPU".to_string(),
    }
}

/// The warm-up steps actually skipped, the step time and how it was figured ("median" or
/// "mean"), from the steps' times and whether each read the loss back. A step that reads
/// nothing back (on a GPU) is timed when its work is queued, and the next read waits for it:
/// such times only add up over whole periods. So the warm-up ends at the first read at or after
/// `warmup` steps, and the figure is the mean of the rest (the last step always reads). Where
/// every step reads (the CPU), the median of the steps after `warmup`.
fn step_figure(steps: &[f64], read: &[bool], warmup: usize) -> (usize, f64, &'static str) {
    let warmup = warmup.min(steps.len());
    if read[warmup..].iter().all(|&r| r) {
        return (warmup, median(&steps[warmup..]), "median");
    }
    let w = (warmup..steps.len())
        .find(|&w| w == 0 || read[w - 1])
        .unwrap_or(warmup);
    let m = &steps[w..];
    (w, m.iter().sum::<f64>() / m.len().max(1) as f64, "mean")
}

/// Times the parts of a training step, `reps` times each, and prints the medians. On the CPU
/// backend every op runs when it is called, so wall-clock time between calls is the ops' time.
fn breakdown(
    model: &webtune::CausalLM,
    data: &webtune::data::Dataset,
    batch: usize,
    reps: usize,
) -> Result<()> {
    use burn::module::Module;
    use webtune::train::{batch_tensors, cross_entropy};
    let refs: Vec<&[u32]> = data.train.iter().take(batch).map(Vec::as_slice).collect();
    let device = model.device();
    let (inputs, targets) = batch_tensors(&refs, &device);
    let inner = model.valid();
    let (inputs_inner, targets_inner) = batch_tensors(&refs, &device.clone().inner());
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut record = |name: &'static str, secs: f64| match rows.iter_mut().find(|r| r.0 == name) {
        Some(r) => r.1.push(secs),
        None => rows.push((name, vec![secs])),
    };
    for _ in 0..reps {
        let t = Instant::now();
        let logits = inner.forward(inputs_inner.clone(), None);
        record("inference: logits", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let _ = cross_entropy(logits, targets_inner.clone()).into_data();
        record("inference: loss from logits", t.elapsed().as_secs_f64());

        let t = Instant::now();
        // As a training step computes it: the LM head fused with the loss.
        let loss = model.loss(inputs.clone(), targets.clone());
        record("training: forward and loss", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let grads = loss.backward();
        record("training: backward", t.elapsed().as_secs_f64());
        let t = Instant::now();
        drop(grads);
        record("training: freeing the graph", t.elapsed().as_secs_f64());
    }
    for (name, v) in rows {
        eprintln!("{:>8.3} s  {name}", median(&v));
    }

    // The matmuls of one layer at this batch, 2-D and batched: the speed the CPU's gemm reaches.
    let inner_device = device.clone().inner();
    // The model width (the first projection's input) and its widest projection (the MLP's).
    let dims: Vec<[usize; 2]> = model.projections().iter().map(|p| p.2.dims()).collect();
    let hidden = dims.first().map_or(0, |d| d[0]);
    let inter = dims.iter().map(|d| d[1]).max().unwrap_or(0);
    let tokens = batch * data.seq_len;
    for (m, k, n) in [
        (tokens, hidden, hidden),
        (tokens, hidden, inter),
        (tokens, inter, hidden),
    ] {
        let a2 = burn::tensor::Tensor::<2>::ones([m, k], &inner_device);
        let w = burn::tensor::Tensor::<2>::ones([k, n], &inner_device);
        let a3 = a2.clone().reshape([batch, m / batch, k]);
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        let mut t2 = Vec::new();
        let mut t3 = Vec::new();
        let mut tt = Vec::new();
        for _ in 0..reps.max(5) {
            let t = Instant::now();
            let _ = a2.clone().matmul(w.clone()).into_data();
            t2.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = a3.clone().matmul(w.clone().unsqueeze::<3>()).into_data();
            t3.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = a2
                .clone()
                .matmul(w.clone().transpose().transpose())
                .into_data();
            tt.push(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "gemm [{m}x{k}]x[{k}x{n}]: 2-D {:.1} GFLOP/s, batched {:.1} GFLOP/s",
            gflop / median(&t2),
            gflop / median(&t3)
        );
    }
    Ok(())
}

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Peak resident set size of this process (`VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts a new peak (Linux: writing 5 to clear_refs resets VmHWM), so the training peak is
/// measured apart from loading.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
