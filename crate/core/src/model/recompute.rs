//! Activation recomputation (gradient checkpointing) over a model's decoder layers.
//!
//! The backward pass of a layer needs what its forward pass computed (the normed inputs, queries,
//! keys, attention probabilities, the MLP's gate and up projections...): ~20 MB a layer for
//! SmolLM2 at 4 x 128 tokens, 30 layers. Here the forward pass keeps only each layer's input
//! (1.2 MB), and the backward pass goes from the last layer to the first, running each layer's
//! forward again with its graph, back-propagating the gradient that arrived at its output, and
//! handing the gradient at its input to the layer before. The peak then holds one layer's
//! activations instead of all of them, for one more forward pass of the layers.
//!
//! burn's own checkpointing (`Device::gradient_checkpointing`) recomputes only the operations it
//! marks memory-bound, which here lowers nothing (measured: README, "Speed").

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::kernels;
use crate::rng::mix_index;

/// The decoder layers, twice: without gradients (`Module::no_grad`: the forward pass builds no
/// graph, and dropout still draws its masks) and as they train, with how to run one.
pub(crate) struct Layers<'a, L, F> {
    pub frozen: &'a [L],
    pub training: &'a [L],
    pub forward: F,
}

/// The loss (times `scale`, detached) and the gradients of the trainable parameters of `model`,
/// recomputing each layer in the backward pass. `x` is the embedding's output (no graph), `head`
/// the loss from the last layer's output. Dropout draws, per layer, from a seed derived from
/// `seed` and the layer, in both passes (the device's generator, and the CPU's dropout stream,
/// [`kernels::with_dropout_stream`]): the recomputed layer draws the masks the first pass drew.
///
/// # Shapes
/// - x: `[tokens, hidden]`; each layer `[tokens, hidden] -> [tokens, hidden]`; head -> `[1]`
pub(crate) fn loss_and_grads<M: Module, L: Module>(
    model: &M,
    layers: Layers<'_, L, impl Fn(&L, Tensor<2>) -> Tensor<2>>,
    x: Tensor<2>,
    head: impl FnOnce(Tensor<2>) -> Tensor<1>,
    scale: f64,
    seed: u64,
) -> (Tensor<1>, GradientsParams) {
    let device = x.device();
    let Layers {
        frozen,
        training,
        forward,
    } = layers;

    // Forward, without a graph: only each layer's input is kept.
    let mut inputs = Vec::with_capacity(frozen.len());
    let mut x = x;
    for (i, layer) in frozen.iter().enumerate() {
        device.seed(layer_seed(seed, i));
        inputs.push(x.clone());
        x = kernels::with_dropout_stream(layer_seed(seed, i), || forward(layer, x));
    }

    // The head: the loss, and the gradient at the last layer's output.
    let mut accumulator = GradientsAccumulator::<M>::new();
    let x = x.detach().require_grad();
    let loss = head(x.clone()).mul_scalar(scale);
    let mut grads = loss.backward();
    let mut grad = x.grad(&grads);
    accumulator.accumulate(model, GradientsParams::from_module(&mut grads, model));
    drop(grads);

    // Backward, a layer at a time: its forward again, with a graph, then back-propagate `grad`
    // (the gradient of the sum of output * grad is grad).
    for (i, layer) in training.iter().enumerate().rev() {
        let (Some(input), Some(g)) = (inputs.pop(), grad.take()) else {
            break;
        };
        device.seed(layer_seed(seed, i));
        let input = input.detach().require_grad();
        let out =
            kernels::with_dropout_stream(layer_seed(seed, i), || forward(layer, input.clone()));
        let mut grads = (out * g).sum().backward();
        accumulator.accumulate(model, GradientsParams::from_module(&mut grads, layer));
        grad = input.grad(&grads);
    }
    (loss.detach(), accumulator.grads())
}

/// Layer `i`'s dropout seed within a micro-batch drawn with `seed`.
fn layer_seed(seed: u64, i: usize) -> u64 {
    mix_index(seed, i as u64 + 1)
}
