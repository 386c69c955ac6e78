//! The trainer's behaviour: reproducible runs, pause/resume, stop, progress events, the learning
//! rate schedule, and that training lowers the loss.
// Native only: reads fixtures and fetched files from disk (the browser tests are in crate/wasm/tests/browser.rs).

use crate::common::*;
use webtune::burn::module::Param;
use webtune::burn::tensor::{Device, Distribution};
use webtune::checkpoint::{self, CheckpointFile};
use webtune::data::{Dataset, Document};
use webtune::lora::{self, LoraConfig};
use webtune::model::CausalLM;
use webtune::spec::{DataSpec, RunSpec};
use webtune::train::{Control, Progress, RunEnd, RunStatus, Trainer};

fn tiny(device: &Device) -> CausalLM {
    load_fixture_model("tiny-llama-tied", device)
}

/// Two "documents" of a repeating pattern over the tiny vocabulary: easy to learn.
fn data() -> Dataset {
    let doc = |name: &str, offset: u32| Document {
        name: name.into(),
        tokens: (0..400).map(|i| 3 + (i * 7 + offset) % 40).collect(),
    };
    let docs = [doc("a.txt", 0), doc("b.txt", 5), doc("c.txt", 11)];
    Dataset::split(&docs, Some(2), &data_spec(), 1).unwrap()
}

fn data_spec() -> DataSpec {
    DataSpec {
        seq_len: 16,
        val_fraction: 0.3,
        ..DataSpec::default()
    }
}

fn spec(steps: usize, seed: u64) -> RunSpec {
    let mut spec = RunSpec {
        data: data_spec(),
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.05,
            ..LoraConfig::default()
        },
        ..RunSpec::default()
    };
    spec.train.steps = steps;
    spec.train.batch_size = 4;
    spec.train.grad_accum = 2;
    spec.train.eval_every = 5;
    spec.train.seed = seed;
    spec.optim.lr = 1e-2;
    spec
}

fn trainer(steps: usize, seed: u64) -> Trainer {
    trainer_of(spec(steps, seed))
}

fn trainer_of(spec: RunSpec) -> Trainer {
    let device = webtune::device::cpu().autodiff();
    let mut model = tiny(&device);
    lora::attach(&mut model, &spec.lora, spec.train.seed).unwrap();
    Trainer::new(model, data(), spec).unwrap()
}

fn lora_state(t: &Trainer) -> Vec<Vec<f32>> {
    t.model()
        .projections()
        .into_iter()
        .filter_map(|(_, _, p)| {
            p.lora
                .as_ref()
                .map(|l| [to_vec(l.a.val()), to_vec(l.b.val())])
        })
        .flatten()
        .collect()
}

#[test]
fn training_lowers_the_validation_loss_and_reports_progress() {
    let mut t = trainer(30, 3);
    let before = pollster::block_on(t.evaluate()).unwrap().unwrap();
    let mut events: Vec<Progress> = Vec::new();
    let end = t
        .run_blocking(|p| {
            events.push(p.clone());
            Control::Continue
        })
        .unwrap();
    assert_eq!(end, RunEnd::Finished);
    assert_eq!(events.len(), 30);
    assert_eq!(events.last().unwrap().step, 30);
    let after = events.last().unwrap().val_loss.unwrap();
    println!("val loss {before} -> {after}");
    assert!(after < before - 0.3, "val loss {before} -> {after}");
    // Evaluations every 5 steps, train loss every step, tokens counted, lr scheduled.
    assert_eq!(events.iter().filter(|e| e.val_loss.is_some()).count(), 6);
    assert!(events.iter().all(|e| e.train_loss.is_some()));
    assert_eq!(events[0].tokens_seen, 4 * 2 * 16);
    assert!(events[0].lr < events[2].lr, "warmup");
    assert!(events[29].lr < events[10].lr, "decay");
    assert!(events[29].eta_secs == 0.0 && events[10].eta_secs > 0.0);
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    let run = |seed| {
        let mut t = trainer(4, seed);
        t.run_blocking(|_| Control::Continue).unwrap();
        lora_state(&t)
    };
    let a = run(7);
    assert!(a == run(7), "two runs with the same seed differ");
    assert!(a != run(8), "the seed changes nothing");
}

#[test]
fn the_number_of_threads_changes_nothing() {
    // A CPU step runs its batch's shards at once on several threads, each drawing dropout masks
    // from a stream of its own: on one thread, one after the other, the run must be the same.
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut t = trainer(4, 7);
            let mut losses = Vec::new();
            t.run_blocking(|p| {
                losses.push(p.train_loss);
                Control::Continue
            })
            .unwrap();
            (losses, lora_state(&t))
        })
    };
    let one = run(1);
    let two = run(2);
    assert_eq!(one.0, two.0, "the training losses differ");
    assert!(one.1 == two.1, "the adapters differ");
}

#[test]
fn pause_and_resume_give_the_same_result_as_one_run() {
    let mut whole = trainer(6, 9);
    whole.run_blocking(|_| Control::Continue).unwrap();

    let mut paused = trainer(6, 9);
    let end = paused
        .run_blocking(|p| {
            if p.step == 2 {
                Control::Pause
            } else {
                Control::Continue
            }
        })
        .unwrap();
    assert_eq!(end, RunEnd::Paused);
    assert_eq!(paused.steps_done(), 2);
    assert_eq!(
        paused.run_blocking(|_| Control::Continue).unwrap(),
        RunEnd::Finished
    );
    assert!(lora_state(&whole) == lora_state(&paused));
}

#[test]
fn stop_ends_the_run_early() {
    let mut t = trainer(10, 1);
    let end = t
        .run_blocking(|p| {
            if p.step == 3 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
    assert_eq!(end, RunEnd::Stopped);
    assert_eq!(t.steps_done(), 3);
    assert!(t.is_finished());
    assert!(pollster::block_on(t.step()).is_err());
}

#[test]
fn the_loop_applies_pause_and_stop_and_says_when_a_checkpoint_is_due() {
    // What the page's worker and the CLI drive: call `next` while it reports Running.
    let mut t = trainer(7, 3);
    t.set_checkpoint_every(3);
    let next = |t: &mut Trainer| pollster::block_on(t.next()).unwrap();
    // The first call takes no step: the base model's validation loss, the history's step 0.
    let p = next(&mut t);
    assert_eq!(
        (p.status, p.step, t.steps_done()),
        (RunStatus::Running, 0, 0)
    );
    assert!(p.val_loss.is_some() && p.train_loss.is_none());
    let mut due = Vec::new();
    for _ in 0..4 {
        let p = next(&mut t);
        assert_eq!(p.status, RunStatus::Running);
        if p.checkpoint_due {
            due.push(p.step);
        }
    }
    assert_eq!(due, [3]);

    // A pause takes no step, reports the last progress and asks for a checkpoint; the next call
    // continues.
    t.pause();
    let p = next(&mut t);
    assert_eq!(
        (p.status, p.step, p.checkpoint_due),
        (RunStatus::Paused, 4, true)
    );
    assert_eq!(t.steps_done(), 4);
    let p = next(&mut t);
    assert_eq!((p.status, p.step), (RunStatus::Running, 5));

    // The last step finishes the run: no checkpoint (nothing left to resume), no more steps.
    next(&mut t);
    let p = next(&mut t);
    assert_eq!(
        (p.status, p.step, p.checkpoint_due),
        (RunStatus::Finished, 7, false)
    );
    let again = next(&mut t);
    assert_eq!((again.status, again.step), (RunStatus::Finished, 7));
    assert_eq!(t.history.len(), 8, "steps 0 to 7");

    // A stop ends it before the next step.
    let mut t = trainer(7, 3);
    next(&mut t);
    next(&mut t);
    t.stop();
    let p = next(&mut t);
    assert_eq!((p.status, p.step), (RunStatus::Stopped, 1));
    // A pause before the first step reports step 0.
    let mut t = trainer(7, 3);
    t.pause();
    let p = next(&mut t);
    assert_eq!(
        (p.status, p.step, p.checkpoint_due),
        (RunStatus::Paused, 0, true)
    );
}

#[test]
fn gradient_checkpointing_device_trains_the_same() {
    // burn's gradient checkpointing (Device::gradient_checkpointing) refuses to mix tensors of
    // two strategies: the optimizer's updated A and B must keep the device's.
    let mut plain = trainer(3, 5);
    plain.run_blocking(|_| Control::Continue).unwrap();
    let device = webtune::device::cpu().autodiff().gradient_checkpointing();
    let mut model = tiny(&device);
    let spec = spec(3, 5);
    lora::attach(&mut model, &spec.lora, 5).unwrap();
    let mut checkpointed = Trainer::new(model, data(), spec).unwrap();
    checkpointed.run_blocking(|_| Control::Continue).unwrap();
    let (a, b) = (lora_state(&plain), lora_state(&checkpointed));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "checkpointed training differs by {diff}");
}

#[test]
fn recomputing_the_layers_trains_the_same_without_dropout() {
    // exec.recompute through the trainer (two micro-batches a step, each scaled by 1/2):
    // the same adapter as keeping every activation. Its gradients against PEFT's:
    // tests/lora_golden.rs.
    // `switch`: recomputation turned on after the first step (Trainer::set_recompute, as the
    // page's Resume with "Save memory" does).
    let run = |recompute: bool, switch: bool| {
        let device = webtune::device::cpu().autodiff();
        let mut model = tiny(&device);
        let mut spec = spec(3, 6);
        spec.lora.dropout = 0.0;
        spec.exec.recompute = recompute;
        lora::attach(&mut model, &spec.lora, 6).unwrap();
        let mut t = Trainer::new(model, data(), spec).unwrap();
        t.run_blocking(|p| {
            if switch && p.step == 1 {
                Control::Pause
            } else {
                Control::Continue
            }
        })
        .unwrap();
        if switch {
            assert_eq!(t.steps_done(), 1, "paused after the first step");
            t.set_recompute(true);
            t.run_blocking(|_| Control::Continue).unwrap();
        }
        lora_state(&t)
    };
    let plain = run(false, false);
    for (name, other) in [
        ("recomputed", run(true, false)),
        ("switched", run(false, true)),
    ] {
        let diff = plain
            .iter()
            .zip(&other)
            .map(|(x, y)| max_abs_diff(x, y))
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "{name} training differs by {diff}");
    }
}

#[test]
fn recomputed_gradients_with_dropout_match_finite_differences() {
    // With dropout, the recomputed layer must draw the masks its first forward pass drew, or the
    // gradients belong to another function than the loss: check them against the loss itself,
    // (L(p + eps g) - L(p - eps g)) / 2 eps = |g|^2 along the gradient g.
    let device = webtune::device::cpu().autodiff();
    let mut model = load_fixture_model("tiny-llama-untied", &device);
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.5,
        targets: vec!["all-linear".into()],
        ..LoraConfig::default()
    };
    lora::attach(&mut model, &cfg, 2).unwrap();
    // B starts at zero: give it values, so that every A has a gradient too.
    device.seed(9);
    for (_, _, p) in model.projections_mut() {
        if let Some(l) = p.lora.as_mut() {
            let b = l.b.val().random_like(Distribution::Normal(0.0, 0.2));
            l.b = Param::initialized(l.b.id, b.detach().require_grad());
        }
    }
    let windows: Vec<Vec<u32>> = (0..3u32)
        .map(|w| (0..12).map(|i| 3 + (i * 5 + w * 7) % 40).collect())
        .collect();
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let (inputs, targets) = webtune::train::batch_tensors(&refs, &device);
    let loss_at = |m: &CausalLM| {
        let (loss, _) = m.loss_recomputed(inputs.clone(), targets.clone(), 1.0, 17);
        loss.into_scalar::<f32>() as f64
    };
    let (_, grads) = model.loss_recomputed(inputs.clone(), targets.clone(), 1.0, 17);
    let mut norm_sq = 0.0;
    let mut gs = Vec::new();
    for (_, _, p) in model.projections() {
        if let Some(l) = &p.lora {
            for param in [&l.a, &l.b] {
                let g = grads.get::<2>(param.id).expect("a LoRA gradient");
                norm_sq += to_vec(g.clone())
                    .iter()
                    .map(|x| (*x as f64).powi(2))
                    .sum::<f64>();
                gs.push(g);
            }
        }
    }
    assert!(norm_sq > 0.0);
    // A step that moves the loss by ~1e-2 |g|: far above f32 rounding, small for curvature.
    let eps = 1e-2 / norm_sq.sqrt();
    let shifted = |sign: f64| {
        let mut m = model.clone();
        let mut g = gs.iter();
        for (_, _, p) in m.projections_mut() {
            if let Some(l) = p.lora.as_mut() {
                for param in [&mut l.a, &mut l.b] {
                    let step = g.next().expect("a gradient per matrix").clone();
                    let moved = param.val() + step.mul_scalar(sign * eps);
                    *param = Param::initialized(param.id, moved.detach().require_grad());
                }
            }
        }
        m
    };
    let numeric = (loss_at(&shifted(1.0)) - loss_at(&shifted(-1.0))) / (2.0 * eps);
    let rel = (numeric - norm_sq).abs() / norm_sq;
    println!("directional derivative: finite differences {numeric}, gradient {norm_sq}");
    assert!(
        rel < 2e-2,
        "recomputed gradients are off by {rel} (relative)"
    );
}

#[test]
fn schedule_warms_up_linearly_then_decays_by_cosine() {
    let mut spec = RunSpec::default();
    spec.train.steps = 110;
    spec.optim.lr = 1e-3;
    spec.optim.warmup_steps = Some(10);
    spec.optim.min_lr_ratio = 0.1;
    assert!((spec.lr_at(0) - 1e-4).abs() < 1e-12);
    assert!((spec.lr_at(9) - 1e-3).abs() < 1e-12);
    assert!((spec.lr_at(10) - 1e-3).abs() < 1e-12);
    assert!((spec.lr_at(60) - 0.55e-3).abs() < 1e-9); // halfway: (max + min) / 2
    assert!((spec.lr_at(110) - 1e-4).abs() < 1e-12);
}

#[test]
fn a_run_resumed_from_a_checkpoint_equals_one_never_interrupted() {
    // Dropout is on (spec()): the masks of a resumed step must be the masks it would have had.
    let mut whole = trainer(10, 4);
    whole.run_blocking(|_| Control::Continue).unwrap();

    let mut first = trainer(10, 4);
    first
        .run_blocking(|p| {
            if p.step == 6 {
                Control::Pause
            } else {
                Control::Continue
            }
        })
        .unwrap();
    let bytes = pollster::block_on(first.checkpoint("tiny")).unwrap();
    drop(first);

    // A fresh process would have: the base model, the same texts, the checkpoint file.
    let device = webtune::device::cpu().autodiff();
    let file = CheckpointFile::parse(checkpoint::FILE_NAME, bytes.clone()).unwrap();
    assert_eq!(file.state.step, 6);
    let mut resumed = Trainer::resume(tiny(&device), data(), &file, "tiny").unwrap();
    assert_eq!(resumed.steps_done(), 6);
    assert_eq!(
        resumed.run_blocking(|_| Control::Continue).unwrap(),
        RunEnd::Finished
    );
    assert!(
        lora_state(&whole) == lora_state(&resumed),
        "the resumed run's adapter differs from the uninterrupted run's"
    );
    let losses =
        |t: &Trainer| -> Vec<Option<f32>> { t.history.iter().map(|p| p.train_loss).collect() };
    assert_eq!(losses(&whole), losses(&resumed));

    // A checkpoint only resumes on the model and texts it was made with.
    let other_text = {
        let docs = [Document {
            name: "z.txt".into(),
            tokens: (0..400).map(|i| 3 + (i * 5) % 40).collect(),
        }];
        Dataset::split(&docs, Some(2), &data_spec(), 1).unwrap()
    };
    let err = Trainer::resume(tiny(&device), other_text, &file, "tiny")
        .err()
        .unwrap();
    assert!(err.to_string().contains("other text files"), "{err}");
    let err = Trainer::resume(tiny(&device), data(), &file, "another")
        .err()
        .unwrap();
    assert!(err.to_string().contains("`another`"), "{err}");
    // Nor on a base loaded in f16 when it trained on the f32 weights (the reverse, an f16 run on
    // a base loaded in f32, rounds the base: `Trainer::new`).
    let (in_f16, _) = tiny(&device).with_base_in_f16();
    let err = Trainer::resume(in_f16, data(), &file, "tiny")
        .err()
        .unwrap();
    assert!(err.to_string().contains("f32 weights"), "{err}");

    // A damaged checkpoint is an error, never a panic.
    let mut rng = webtune::rng::Rng::new(3);
    for _ in 0..200 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            let i = (rng.next_u64() as usize) % b.len();
            b[i] ^= 1 << (rng.next_u64() % 8);
        }
        if let Ok(file) = CheckpointFile::parse(checkpoint::FILE_NAME, b) {
            let _ = Trainer::resume(tiny(&device), data(), &file, "tiny");
        }
    }
    for len in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(CheckpointFile::parse(checkpoint::FILE_NAME, bytes[..len].to_vec()).is_err());
    }
}

/// A run on a GPU (`--features gpu`; Mesa's lavapipe in CI) with its base kept in f16, whose
/// frozen products run in f16: the CPU's f32 run, step for step, within f16's tolerance (the
/// golden tests' 1.5e-2 on gradients; AdamW's steps follow them).
#[cfg(feature = "gpu")]
#[test]
fn a_run_on_the_gpu_with_its_base_in_f16_follows_the_cpu_run_in_f32() {
    let run = |device: Device, base_f16: bool| {
        let mut model = tiny(&device);
        let mut spec = spec(10, 4);
        // No dropout: the devices draw different masks.
        spec.lora.dropout = 0.0;
        spec.exec.base_f16 = base_f16;
        spec.exec.log_every = Some(1);
        lora::attach(&mut model, &spec.lora, 4).unwrap();
        let mut t = Trainer::new(model, data(), spec).unwrap();
        assert_eq!(t.model().base_in_f16(), base_f16, "base in f16");
        let mut losses = Vec::new();
        let end = t
            .run_blocking(|p| {
                losses.push((p.train_loss, p.val_loss));
                Control::Continue
            })
            .unwrap();
        assert_eq!(end, RunEnd::Finished);
        losses
    };
    let gpu = match webtune::device::gpu() {
        Ok(device) => device.autodiff(),
        Err(e) => panic!("{e} (tests/setup.sh installs Mesa's lavapipe for this test)"),
    };
    let cpu = run(webtune::device::cpu().autodiff(), false);
    let half = run(gpu, true);
    assert_eq!(cpu.len(), 10);
    assert_eq!(cpu.len(), half.len());
    for (step, (want, got)) in cpu.iter().zip(&half).enumerate() {
        println!("step {}: CPU f32 {want:?}, GPU f16 {got:?}", step + 1);
        for (want, got) in [(want.0, got.0), (want.1, got.1)] {
            assert_eq!(want.is_some(), got.is_some(), "step {}", step + 1);
            if let (Some(want), Some(got)) = (want, got) {
                assert!(
                    (want - got).abs() <= 1e-2 * want.abs(),
                    "step {}: loss {got} on the GPU in f16 against {want} on the CPU",
                    step + 1
                );
            }
        }
    }
    // And it learned: the last validation loss below the first.
    let vals: Vec<f32> = half.iter().filter_map(|l| l.1).collect();
    assert!(
        vals.len() >= 2 && vals[vals.len() - 1] < vals[0],
        "{vals:?}"
    );
}

/// The step `Session::measure` times for a run's duration estimate (`train::speed_probe`): of the
/// run's batch on a GPU (a GPU step's time hardly grows with its batch; on the CPU a window per
/// thread, at most the run's batch), after the steps that compile kernels there, with its loss
/// read back (a GPU step that reads nothing is timed when its work is queued, not done: the
/// default reads every 5th), and neither the probe's last step nor one that evaluates. Run as
/// `measure` runs it: on the CPU, and on the GPU (lavapipe in CI).
#[test]
fn the_speed_probe_times_a_step_read_back_after_the_gpu_warms_up() {
    let mut run = spec(100, 5);
    run.train.eval_every = 1;
    run.exec.log_every = None;
    #[cfg_attr(not(feature = "gpu"), allow(unused_mut))]
    let mut devices = vec![(webtune::device::cpu().autodiff(), true)];
    #[cfg(feature = "gpu")]
    match webtune::device::gpu() {
        Ok(device) => devices.push((device.autodiff(), false)),
        Err(e) => panic!("{e} (tests/setup.sh installs Mesa's lavapipe for this test)"),
    }
    for (device, on_cpu) in devices {
        let (probe, warmup) = webtune::train::speed_probe(&run, &device);
        let batch = probe.train.batch_size;
        if on_cpu {
            assert!(
                (1..=run.train.batch_size).contains(&batch),
                "{batch} on the CPU"
            );
        } else {
            assert_eq!(batch, run.train.batch_size, "on a GPU");
        }
        assert!(on_cpu || warmup >= 2, "a GPU's first steps compile kernels");
        let mut model = tiny(&device);
        lora::attach(&mut model, &probe.lora, probe.train.seed).unwrap();
        let mut t = Trainer::new(model, data(), probe).unwrap();
        for _ in 0..warmup {
            pollster::block_on(t.step()).unwrap();
        }
        let p = pollster::block_on(t.step()).unwrap();
        assert!(
            p.train_loss.is_some(),
            "on_cpu {on_cpu}: the timed step read its loss back"
        );
        assert_eq!(
            p.val_loss, None,
            "on_cpu {on_cpu}: the timed step evaluated"
        );
        assert!(
            !t.is_finished(),
            "on_cpu {on_cpu}: the timed step was the last"
        );
        assert_eq!(p.tokens_seen, (warmup + 1) * batch * 16, "on_cpu {on_cpu}");
    }
}

/// Two sessions in one process, training at once on two threads, each with its own seed and its
/// own products with its frozen f16 base (16-bit integers in one, widened in the other), end
/// with the adapters each ends with alone: bit for bit on the CPU. Nothing a run computes with
/// is the process's: the products are the model's, the dropout masks the run's own streams.
#[test]
fn two_sessions_train_at_once_each_as_it_would_alone() {
    use webtune::kernels::FrozenProducts;
    use webtune::session::Session;
    let gguf = std::fs::read(fixtures().join("tiny-llama-q.gguf")).unwrap();
    let run = |seed: u64, products: FrozenProducts| {
        let mut s = Session::new(webtune::device::cpu());
        let base = webtune::BaseModel::from_gguf_with("tiny.gguf", gguf.clone(), s.device(), true)
            .unwrap();
        s.set_model(base);
        let text = "the cat sat on the mat and the dog sat on the log. ".repeat(30);
        s.add_text("a.txt", text.as_bytes()).unwrap();
        let mut spec = RunSpec::default();
        spec.data.seq_len = 16;
        spec.train.steps = 6;
        spec.train.seed = seed;
        spec.optim.lr = 1e-2;
        spec.exec.base_f16 = true;
        spec.exec.products = Some(products);
        s.start(spec).unwrap();
        let mut losses = Vec::new();
        loop {
            let p = pollster::block_on(s.step()).unwrap();
            losses.push(p.train_loss);
            if p.status != RunStatus::Running {
                break;
            }
        }
        let adapter =
            pollster::block_on(s.export_adapter(webtune::formats::peft::AdapterDtype::F32))
                .unwrap();
        (losses, adapter.safetensors)
    };
    let a = (3, FrozenProducts::Int16);
    let b = (8, FrozenProducts::Widened);
    let alone = [run(a.0, a.1), run(b.0, b.1)];
    let together = std::thread::scope(|scope| {
        let ta = scope.spawn(|| run(a.0, a.1));
        let tb = scope.spawn(|| run(b.0, b.1));
        [ta.join().unwrap(), tb.join().unwrap()]
    });
    assert!(
        together[0] == alone[0],
        "the int16 run changed beside the other"
    );
    assert!(
        together[1] == alone[1],
        "the widened run changed beside the other"
    );
    // Each choice is its own: the same seed with the other products trains another adapter.
    assert!(
        run(a.0, b.1).1 != alone[0].1,
        "the products changed nothing"
    );
    assert!(run(b.0, b.1).0 == alone[1].0);
}

/// A finished run's adapter, opened in a fresh session (a PEFT zip, or its checkpoint), is what
/// the next run continues on new texts: it starts from the adapter's matrices (and, from a
/// checkpoint, AdamW's state), with the adapter's LoRA settings; generation compares it before.
#[test]
fn an_opened_adapter_is_what_the_next_run_continues() {
    use webtune::NamedFile;
    use webtune::formats::peft::AdapterDtype;
    use webtune::session::Session;
    let gguf = std::fs::read(fixtures().join("tiny-llama-q.gguf")).unwrap();
    let session = || {
        let mut s = Session::new(webtune::device::cpu());
        let base = webtune::BaseModel::from_gguf("tiny.gguf", gguf.clone(), s.device()).unwrap();
        s.set_model(base);
        s
    };
    let mut spec = RunSpec::default();
    spec.data.seq_len = 16;
    spec.train.steps = 3;
    spec.lora.r = 4;
    spec.optim.lr = 1e-2;
    let mut first = session();
    let text = "the cat sat on the mat and the dog sat on the log. ".repeat(30);
    first.add_text("a.txt", text.as_bytes()).unwrap();
    first.start(spec.clone()).unwrap();
    while pollster::block_on(first.step()).unwrap().status == RunStatus::Running {}
    let files = pollster::block_on(first.export_adapter(AdapterDtype::F32)).unwrap();
    let saved = pollster::block_on(first.checkpoint()).unwrap();

    let mut next = session();
    let info = next
        .open_adapter(vec![NamedFile::new("run.zip", files.to_zip())])
        .unwrap();
    assert_eq!((info.lora.r, info.optimizer_state), (4, false));
    let sampling = webtune::SamplingConfig::greedy(4);
    pollster::block_on(next.generate("the cat", false, &sampling, true)).unwrap();
    next.add_text(
        "b.txt",
        "a new text about the log and the dog. "
            .repeat(30)
            .as_bytes(),
    )
    .unwrap();
    let mut other = spec.clone();
    other.lora.r = 8; // the adapter's settings win
    let plan = next.start(other).unwrap();
    assert_eq!(plan.trainable_parameters, info.parameters);
    let at_start = pollster::block_on(next.export_adapter(AdapterDtype::F32)).unwrap();
    assert!(
        at_start.safetensors == files.safetensors,
        "it starts from the adapter"
    );
    assert_eq!(next.trainer().unwrap().spec().lora.r, 4);
    assert!(pollster::block_on(next.step()).is_ok());

    // A checkpoint brings AdamW's state along.
    let mut again = session();
    let info = again
        .open_adapter(vec![NamedFile::new("checkpoint.safetensors", saved)])
        .unwrap();
    assert!(info.optimizer_state);
    again
        .add_text(
            "b.txt",
            "a new text about the log and the dog. "
                .repeat(30)
                .as_bytes(),
        )
        .unwrap();
    again.start(spec.clone()).unwrap();
    let at_start = pollster::block_on(again.export_adapter(AdapterDtype::F32)).unwrap();
    assert!(at_start.safetensors == files.safetensors);
    while pollster::block_on(again.step()).unwrap().status == RunStatus::Running {}

    // An adapter of another model is refused with the reason.
    let mut gpt2 = Session::new(webtune::device::cpu());
    gpt2.set_model(
        webtune::BaseModel::from_path(&fixtures().join("tiny-gpt2"), gpt2.device()).unwrap(),
    );
    let e = gpt2
        .open_adapter(vec![NamedFile::new("run.zip", files.to_zip())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
}

/// An adapter names its base by the model's Hugging Face id where one is known, for PEFT to
/// load it by: the one a GGUF file says it was converted from, the hub cache folder's, or the
/// one the caller fetched it by; else the model's name.
#[test]
fn the_adapter_names_its_base_by_the_hugging_face_id() {
    use crate::common::gguf_writer::rewrite;
    use webtune::formats::gguf::Value;
    use webtune::formats::peft::AdapterDtype;
    use webtune::session::Session;
    let device = webtune::device::cpu().autodiff();
    let with_meta = |pairs: &[(&str, &str)]| {
        let bytes = rewrite(|meta, _| {
            for (k, v) in pairs {
                meta.push((k.to_string(), Value::String(v.to_string())));
            }
        });
        webtune::BaseModel::from_gguf("tiny.gguf", bytes, &device).unwrap()
    };
    let repo = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct";
    assert_eq!(
        with_meta(&[("general.repo_url", repo)]).hub_id.as_deref(),
        Some("HuggingFaceTB/SmolLM2-135M-Instruct")
    );
    let both = with_meta(&[
        ("general.repo_url", repo),
        ("general.source.huggingface.repository", "org/other"),
    ]);
    assert_eq!(both.hub_id.as_deref(), Some("org/other"));
    // Not an id (a path, escapes, another host): not named.
    for bad in [
        "../../etc/passwd",
        "org/na\u{1b}[31mme",
        "https://example.org/org/name",
    ] {
        let base = with_meta(&[("general.source.huggingface.repository", bad)]);
        assert_eq!(base.hub_id, None, "{bad:?}");
        assert_eq!(base.base_model_id(), base.name);
    }

    // A folder in the hub's cache, as transformers leaves it.
    let dir = std::env::temp_dir().join(format!("webtune-hub-cache-{}", std::process::id()));
    let snapshot = dir.join("models--webtune-test--tiny-gpt2/snapshots/0123abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    for f in [
        "config.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors",
    ] {
        std::fs::copy(fixtures().join("tiny-gpt2").join(f), snapshot.join(f)).unwrap();
    }
    let cached = webtune::BaseModel::from_path(&snapshot, &device).unwrap();
    assert_eq!(cached.hub_id.as_deref(), Some("webtune-test/tiny-gpt2"));
    assert_eq!(cached.name, "webtune-test/tiny-gpt2");
    std::fs::remove_dir_all(&dir).unwrap();

    // What the adapter says.
    let mut s = Session::new(device.clone());
    s.set_model(both);
    s.add_text("a.txt", "the cat sat on the mat. ".repeat(40).as_bytes())
        .unwrap();
    let mut spec = RunSpec::default();
    spec.data.seq_len = 16;
    spec.train.steps = 1;
    s.start(spec).unwrap();
    while pollster::block_on(s.step()).unwrap().status == RunStatus::Running {}
    let files = pollster::block_on(s.export_adapter(AdapterDtype::F32)).unwrap();
    let config: serde_json::Value = serde_json::from_str(&files.config_json).unwrap();
    assert_eq!(config["base_model_name_or_path"], "org/other");
}
