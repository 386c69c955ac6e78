//! The fused CPU kernels against the same math composed from burn's ops (whose backward passes
//! burn's autodiff derives): outputs and input gradients, at odd sizes. The model-level golden
//! tests (tests/lora_golden.rs, tests/llama_golden.rs) check both against PyTorch.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::*;
use crate::rng::Rng;

/// The f16 products widened to f32: what these tests compare with the f32 products.
const WIDENED: FrozenProducts = FrozenProducts::Widened;

fn device() -> Device {
    crate::device::cpu().autodiff()
}

fn random<const D: usize>(shape: [usize; D], seed: u64, scale: f32) -> Tensor<D> {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale)
        .collect();
    Tensor::from_data(TensorData::new(v, shape), &device()).require_grad()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

#[track_caller]
fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{name}: max difference {worst} (scale {scale})"
    );
}

/// Runs `f` on fresh copies of `inputs` twice, fused and composed, and compares the outputs and
/// the gradients of sum(output * weights) with respect to every input.
fn check<const D: usize, const O: usize>(
    name: &str,
    inputs: &[Tensor<D>],
    fused_fn: impl Fn(&[Tensor<D>]) -> Tensor<O>,
    composed_fn: impl Fn(&[Tensor<D>]) -> Tensor<O>,
    tol: f32,
) {
    let run = |f: &dyn Fn(&[Tensor<D>]) -> Tensor<O>| {
        let xs: Vec<Tensor<D>> = inputs
            .iter()
            .map(|t| Tensor::from_data(t.to_data(), &device()).require_grad())
            .collect();
        let out = f(&xs);
        let weights = random(out.dims(), 99, 1.0).detach();
        let grads = (out.clone() * weights).sum().backward();
        let g: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| host(x.grad(&grads).expect("every input gets a gradient")))
            .collect();
        (host(out), g)
    };
    let (out_f, grads_f) = run(&fused_fn);
    let (out_c, grads_c) = run(&composed_fn);
    assert_close(&format!("{name} output"), &out_f, &out_c, tol);
    for (i, (a, b)) in grads_f.iter().zip(&grads_c).enumerate() {
        assert_close(&format!("{name} gradient of input {i}"), a, b, tol);
    }
}

#[test]
fn rms_norm_matches_composed() {
    let x = random([7, 37], 1, 2.0);
    let gamma = random([37], 2, 1.0).add_scalar(1.0).reshape([1, 37]);
    let g1 = |t: &Tensor<2>| t.clone().reshape([37]);
    check(
        "rms_norm",
        &[x, gamma],
        |xs| rms_norm(xs[0].clone(), g1(&xs[1]), 1e-5),
        |xs| composed::rms_norm(xs[0].clone(), g1(&xs[1]), 1e-5),
        1e-5,
    );
}

#[test]
fn silu_mul_matches_composed() {
    let g = random([9, 33], 3, 6.0);
    let u = random([9, 33], 4, 2.0);
    check(
        "silu_mul",
        &[g, u],
        |xs| silu_mul(xs[0].clone(), xs[1].clone()),
        |xs| composed::silu_mul(xs[0].clone(), xs[1].clone()),
        1e-5,
    );
}

#[test]
fn rope_matches_composed() {
    let (b, t, h, hd) = (2, 5, 3, 8);
    let x = random([b * t, h * hd], 5, 1.0);
    let (cos, sin) = crate::model::llama::rope::Rope::new(1e4, hd).tables(3, t, &device());
    check(
        "rope",
        &[x],
        |xs| rope(xs[0].clone(), &cos, &sin, b, h),
        |xs| composed::rope(xs[0].clone(), &cos, &sin, b, h),
        1e-6,
    );
}

#[test]
fn causal_softmax_matches_composed() {
    // Two key heads, each with 3 query heads of 5 positions stacked (15 rows), 5 keys; and a
    // decode-like case: 2 new queries after 4 cached positions (6 keys).
    let scale = 1.0 / 8f64.sqrt();
    for (rows, seq, start, keys) in [(15, 5, 0, 5), (6, 2, 4, 6)] {
        let s = random([2, 2, rows, keys], 6, 20.0);
        check(
            "causal_softmax",
            &[s],
            |xs| causal_softmax(xs[0].clone(), seq, start, scale),
            |xs| composed::causal_softmax(xs[0].clone(), seq, start, scale),
            1e-5,
        );
    }
}

#[test]
fn cross_entropy_matches_composed() {
    let logits = random([6, 41], 7, 8.0);
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 40, 7, 7, 13, 2], [6]), &device());
    check(
        "cross_entropy",
        &[logits],
        |xs| cross_entropy(xs[0].clone(), targets.clone()),
        |xs| composed::cross_entropy(xs[0].clone(), targets.clone()),
        1e-5,
    );
}

#[test]
fn ignored_targets_add_nothing_and_get_no_gradient() {
    // Chat data's prompt and padding: IGNORED_TARGET rows, in the plain and the head-fused loss.
    let logits = random([6, 41], 8, 8.0);
    let ignored = IGNORED_TARGET;
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new(vec![ignored, 40, ignored, 7, 13, ignored], [6]),
        &device(),
    );
    check(
        "cross_entropy with ignored targets",
        std::slice::from_ref(&logits),
        |xs| cross_entropy(xs[0].clone(), targets.clone()),
        |xs| composed::cross_entropy(xs[0].clone(), targets.clone()),
        1e-5,
    );
    // The composed loss is what it says: the learned rows' mean over all rows.
    let logp = host(burn::tensor::activation::log_softmax(logits.clone(), 1));
    let want = -(logp[41 + 40] + logp[3 * 41 + 7] + logp[4 * 41 + 13]) / 6.0;
    let got = host(composed::cross_entropy(logits, targets.clone()))[0];
    assert!((got - want).abs() < 1e-5, "{got} against {want}");
    // The head-fused loss, and its gradient: nothing flows to an ignored row.
    let (d, vocab) = (5, 41);
    let h = random([6, d], 9, 2.0).require_grad();
    let w = Tensor::<2>::from_data(random([vocab, d], 10, 1.0).to_data(), &device());
    let loss = linear_cross_entropy(h.clone(), w.clone(), targets.clone(), 4, WIDENED);
    let grads = loss.clone().backward();
    let dh = host(h.grad(&grads).expect("h gets a gradient"));
    for row in [0, 2, 5] {
        assert!(
            dh[row * d..(row + 1) * d].iter().all(|&g| g == 0.0),
            "row {row}"
        );
    }
    let composed = composed::cross_entropy(h.matmul(w.transpose()), targets);
    assert_close("the head-fused loss", &host(loss), &host(composed), 1e-5);
}

#[test]
fn linear_cross_entropy_matches_the_logits_then_the_loss() {
    // 600 rows: full blocks of the fused loss (256 or 64 rows) and a partial one.
    let (rows, d, vocab) = (600, 19, 53);
    let h = random([rows, d], 11, 2.0);
    let targets: Vec<i64> = (0..rows as i64)
        .map(|i| (i * 37 + 5) % vocab as i64)
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [rows]), &device());
    // The head as a tied embedding `[vocab, d]`, and as the transpose of a `[d, vocab]` Linear.
    // Frozen, as the model's heads are (a tensor that requires a gradient takes the logits path).
    let frozen = |t: Tensor<2>| Tensor::<2>::from_data(t.to_data(), &device());
    let tied = frozen(random([vocab, d], 12, 1.0));
    let linear = frozen(random([d, vocab], 13, 1.0));
    let heads = [("tied", tied), ("linear", linear.transpose())];
    for ((name, w), block_rows) in heads.iter().flat_map(|h| {
        [
            (h.clone(), LOSS_BLOCK_ROWS),
            (h.clone(), LOSS_BLOCK_ROWS_LOW_MEMORY),
        ]
    }) {
        let name = format!("{name} ({block_rows}-row blocks)");
        assert!(!w.is_require_grad());
        let run = |fused_path: bool| {
            let h = Tensor::<2>::from_data(h.to_data(), &device()).require_grad();
            let loss = if fused_path {
                linear_cross_entropy(h.clone(), w.clone(), targets.clone(), block_rows, WIDENED)
            } else {
                composed::cross_entropy(h.clone().matmul(w.clone().transpose()), targets.clone())
            };
            // An upstream gradient other than 1, as gradient accumulation gives.
            let grads = loss.clone().mul_scalar(0.37).backward();
            (host(loss), host(h.grad(&grads).expect("h gets a gradient")))
        };
        let (loss_f, grad_f) = run(true);
        let (loss_c, grad_c) = run(false);
        assert_close(&format!("{name} loss"), &loss_f, &loss_c, 1e-5);
        assert_close(&format!("{name} gradient of h"), &grad_f, &grad_c, 1e-5);

        // Without autodiff (evaluation) the loss alone, the same.
        let plain = crate::device::cpu();
        let loss = linear_cross_entropy(
            Tensor::from_data(h.to_data(), &plain),
            Tensor::from_data(w.to_data(), &plain),
            Tensor::from_data(targets.to_data(), &plain),
            block_rows,
            WIDENED,
        );
        assert_close(
            &format!("{name} loss without autodiff"),
            &host(loss),
            &loss_c,
            1e-5,
        );
    }
}

#[test]
fn f16_weights_in_chunks_give_the_products_of_their_rounded_f32_values() {
    // More rows than the widening's chunk, and a partial last chunk: the head's case (tied as
    // `[vocab, d]`, or a Linear `[d, vocab]`), in the loss and in plain products with their
    // backward pass (generation's logits, a head without the fused loss).
    let (rows, d, vocab) = (70, 24, 2 * ops::HEAD_CHUNK + 37);
    let frozen = |t: Tensor<2>| Tensor::<2>::from_data(t.to_data(), &device());
    let tied16 = frozen(random([vocab, d], 21, 1.0)).cast(FloatDType::F16);
    let linear16 = frozen(random([d, vocab], 22, 1.0)).cast(FloatDType::F16);
    let rounded = |w: &Tensor<2>| w.clone().cast(FloatDType::F32);
    let x = random([rows, d], 23, 2.0);
    for (name, w16) in [("tied", tied16.transpose()), ("linear", linear16)] {
        let w32 = rounded(&w16);
        let run = |w: &Tensor<2>| {
            let x = Tensor::<2>::from_data(x.to_data(), &device()).require_grad();
            let y = frozen_matmul(x.clone(), w.clone(), WIDENED);
            // A weighting, so that the gradient of x is not the same in every row.
            let weights = random([rows, vocab], 24, 1.0).detach();
            let grads = (y.clone() * weights).sum().backward();
            (host(y), host(x.grad(&grads).expect("x gets a gradient")))
        };
        let (y16, dx16) = run(&w16);
        let (y32, dx32) = run(&w32);
        assert_close(&format!("{name} product"), &y16, &y32, 1e-6);
        assert_close(&format!("{name} gradient of x"), &dx16, &dx32, 1e-5);

        let targets: Vec<i64> = (0..rows as i64)
            .map(|i| (i * 997 + 3) % vocab as i64)
            .collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [rows]), &device());
        let loss = |w: &Tensor<2>| {
            let h = Tensor::<2>::from_data(x.to_data(), &device()).require_grad();
            let loss = linear_cross_entropy(
                h.clone(),
                w.clone().transpose(),
                targets.clone(),
                32,
                WIDENED,
            );
            let grads = loss.clone().backward();
            (host(loss), host(h.grad(&grads).expect("h gets a gradient")))
        };
        let (loss16, dh16) = loss(&w16);
        let (loss32, dh32) = loss(&w32);
        assert_close(&format!("{name} loss"), &loss16, &loss32, 1e-6);
        assert_close(&format!("{name} loss's gradient of h"), &dh16, &dh32, 1e-5);
    }
}

#[test]
fn the_cpu_backend_takes_the_fused_path_and_not_others() {
    assert!(fused(&crate::device::cpu()));
    assert!(fused(&crate::device::cpu().autodiff()));
}

#[test]
fn dropout_keeps_its_share_scales_and_backpropagates_through_the_same_mask() {
    // Distinct from burn's Bernoulli draws, so checked against what dropout is: each element
    // x / keep or 0, about `keep` of them kept (and not in a pattern), the gradient the mask / keep,
    // and the same mask again for the same device seed.
    let (rows, d, p) = (301, 97, 0.3);
    let keep = 1.0 - p;
    let dev = device();
    let x = random([rows, d], 21, 1.0);
    let run = |seed: u64| {
        dev.seed(seed);
        let x = Tensor::<2>::from_data(x.to_data(), &dev).require_grad();
        let y = dropout(x.clone(), p);
        let upstream = random([rows, d], 22, 1.0);
        let grads = (y.clone() * upstream.clone()).sum().backward();
        let dx = host(x.grad(&grads).expect("x gets a gradient"));
        (host(y), dx, host(upstream))
    };
    let xs = host(x.clone());
    let (y, dx, up) = run(5);
    let mut kept = 0usize;
    for i in 0..xs.len() {
        let on = y[i] != 0.0;
        if on {
            kept += 1;
            assert!((y[i] - xs[i] / keep as f32).abs() <= 1e-6 * xs[i].abs().max(1.0));
        }
        // d(sum(y * up)) / dx = up * mask / keep: the forward's mask, drawn again from its seed.
        let want = if on { up[i] / keep as f32 } else { 0.0 };
        assert!(
            (dx[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
            "gradient {i}"
        );
    }
    // 29,197 draws: the kept share within 5 standard deviations of `keep`.
    let n = xs.len() as f64;
    let sd = (n * keep * p).sqrt();
    assert!(
        ((kept as f64) - n * keep).abs() < 5.0 * sd,
        "kept {kept} of {n}"
    );
    // Each column and each row half kept too: no striping from the hash of the index.
    let col_kept = (0..d)
        .filter(|&c| (0..rows).any(|r| y[r * d + c] != 0.0))
        .count();
    assert_eq!(col_kept, d);
    // The device's seed decides the mask: the same seed, the same mask; another, another.
    assert_eq!(run(5).0, y);
    assert_ne!(run(6).0, y);
    // p = 0 is the identity.
    assert_eq!(host(dropout(x.clone(), 0.0)), xs);
}
