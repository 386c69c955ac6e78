//! A CPU training step's batch in shards, each with a forward and backward pass of its own, run
//! at once on the threads there are: data parallelism inside one step.
//!
//! Why: on the CPU each matmul of a step is split over the threads (gemm on rayon), and between
//! them the threads wait: for the slowest of a product's tasks, and for the one thread that runs
//! the small operations between products. A step of SmolLM2 (4 x 128 tokens) on 2 threads spent
//! 15-18% of each thread's time waiting in the page. Whole shards keep each thread on its own
//! products, and the product of a shard's thread still spreads to a thread left idle (rayon steals
//! its tasks). Measured natively and in the page: README, "Speed".
//!
//! The results do not depend on the number of threads: a batch is always cut into the same shards,
//! each shard's dropout masks come from a stream of its own ([`kernels::with_dropout_stream`]),
//! and the shards' gradients are summed in shard order, whether the shards ran in parallel or one
//! after another.
//!
//! Each shard runs on a copy of the model whose trainable tensors are fresh autodiff leaves (the
//! same values, the same parameter ids): burn's autodiff keeps graphs that share a leaf in one
//! graph behind one lock, which would run the shards' backward passes one at a time.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};

use crate::kernels;
use crate::model::CausalLM;
use crate::rng::mix_index;
use crate::train::batch_tensors;

/// A batch is cut into at most this many shards, whatever the number of threads, so that a run
/// gives the same results on any machine. Two: the parallel path is one `rayon::join`.
pub const SHARDS: usize = 2;

/// The mean loss over `windows` times `scale` (detached), and its gradients for the trainable
/// parameters of `model`, a shard of the windows at a time; each shard's dropout masks are drawn
/// from a seed derived from `seed` and the shard.
///
/// Not for activation recomputation ([`CausalLM::loss_recomputed`], "Save memory"): there a
/// step stays one pass over the whole batch (dropout streams per layer). Its shards one after
/// the other measured slower than the whole batch, and at once above the memory target (README,
/// "Speed").
///
/// # Shapes
/// - windows: each `seq_len + 1` tokens -> `[1]`
pub(crate) fn loss_and_grads(
    model: &CausalLM,
    windows: &[&[u32]],
    device: &Device,
    scale: f64,
    seed: u64,
) -> (Tensor<1>, GradientsParams) {
    let rows = windows.len();
    let per_shard = rows.div_ceil(SHARDS).max(1);
    let shards: Vec<&[&[u32]]> = windows.chunks(per_shard).collect();
    let run = |index: usize| {
        let shard = shards[index];
        // The shard's share of the batch's mean: its own mean weighted by its windows.
        let scale = scale * shard.len() as f64 / rows as f64;
        let seed = mix_index(seed, index as u64);
        let (inputs, targets) = batch_tensors(shard, device);
        kernels::with_dropout_stream(seed, || {
            let model = fresh_leaves(model);
            let loss = model.loss(inputs, targets).mul_scalar(scale);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            (loss.detach(), grads)
        })
    };
    let results = if shards.len() != SHARDS || !parallel() {
        (0..shards.len()).map(run).collect::<Vec<_>>()
    } else {
        let (a, b) = rayon::join(|| run(0), || run(1));
        vec![a, b]
    };
    let mut accumulator = GradientsAccumulator::<CausalLM>::new();
    let mut losses = Vec::with_capacity(results.len());
    for (shard_loss, grads) in results {
        accumulator.accumulate(model, grads);
        losses.push(shard_loss);
    }
    let loss = losses
        .into_iter()
        .reduce(|sum, l| sum + l)
        .unwrap_or_else(|| Tensor::zeros([1], device));
    (loss, accumulator.grads())
}

/// Whether there are threads to run shards on at once: natively, and in the page's
/// multi-threaded build.
pub(crate) fn parallel() -> bool {
    cfg!(any(not(target_arch = "wasm32"), feature = "threads")) && rayon::current_num_threads() > 1
}

/// `model` with each trainable tensor a new autodiff leaf of the same value and parameter id.
fn fresh_leaves(model: &CausalLM) -> CausalLM {
    struct FreshLeaves;
    impl ModuleMapper for FreshLeaves {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                if t.is_require_grad() {
                    t.detach().require_grad()
                } else {
                    t
                }
            })
        }
    }
    model.clone().map(&mut FreshLeaves)
}
