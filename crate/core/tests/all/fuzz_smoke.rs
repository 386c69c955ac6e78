//! The fuzz targets' bodies (crate/fuzz/fuzz_targets/bodies.rs) over valid inputs and a few
//! thousand mutations of them: a short, deterministic smoke of what libFuzzer runs for hours
//! (crate/fuzz/README.md). Any panic fails the test.
// Native only: reads fixtures from disk.
#[path = "../../../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

use crate::common::fixtures;
use webtune::rng::Rng;

/// Bit flips, byte overwrites with boundary values, truncations and splices of `seed`.
fn mutations(seed: &[u8], count: usize, salt: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(salt);
    let mut out = vec![seed.to_vec(), Vec::new()];
    for _ in 0..count {
        let mut b = seed.to_vec();
        if b.is_empty() {
            break;
        }
        // Most structure is in the first bytes (headers, counts): aim there half the time.
        let at = |rng: &mut Rng, len: usize| {
            let span = if rng.next_u64().is_multiple_of(2) {
                len.min(256)
            } else {
                len
            };
            (rng.next_u64() as usize) % span
        };
        match rng.next_u64() % 4 {
            0 => {
                for _ in 0..1 + rng.next_u64() % 4 {
                    let i = at(&mut rng, b.len());
                    b[i] ^= 1 << (rng.next_u64() % 8);
                }
            }
            1 => {
                let i = at(&mut rng, b.len());
                let v = [0x00, 0xff, 0x7f, 0x80][(rng.next_u64() % 4) as usize];
                let n = (1 + rng.next_u64() % 8) as usize;
                for x in b.iter_mut().skip(i).take(n) {
                    *x = v;
                }
            }
            2 => b.truncate(at(&mut rng, b.len())),
            _ => {
                let i = at(&mut rng, b.len());
                let j = at(&mut rng, b.len());
                let chunk = b[j..(j + 16).min(b.len())].to_vec();
                b.splice(i..i, chunk);
            }
        }
        out.push(b);
    }
    out
}

fn run(target: fn(&[u8]), seeds: &[Vec<u8>], count: usize) {
    for (k, seed) in seeds.iter().enumerate() {
        for input in mutations(seed, count, k as u64 + 1) {
            target(&input);
        }
    }
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(path)).unwrap()
}

#[test]
fn gguf() {
    run(
        bodies::gguf,
        &[bodies::TINY_GGUF.to_vec(), read("tiny-gpt2-q.gguf")],
        1500,
    );
}

/// Fewer mutations than `gguf`: each that loads also generates and trains a step.
#[test]
fn gguf_use() {
    run(
        bodies::gguf_use,
        &[bodies::TINY_GGUF.to_vec(), read("tiny-gpt2-q.gguf")],
        300,
    );
}

#[test]
fn safetensors() {
    let seeds = [
        read("tiny-llama-tied/model.safetensors"),
        read("peft/qv-adapter/adapter_model.safetensors"),
    ];
    run(bodies::safetensors, &seeds, 1000);
}

#[test]
fn peft_adapter() {
    let mut seed = read("peft/qv-adapter/adapter_config.json");
    seed.push(0);
    seed.extend(read("peft/qv-adapter/adapter_model.safetensors"));
    run(bodies::peft_adapter, &[seed], 1000);
}

#[test]
fn hf_config() {
    run(
        bodies::hf_config,
        &[
            read("tiny-llama-untied/config.json"),
            read("tiny-gpt2/config.json"),
        ],
        2000,
    );
}

#[test]
fn tokenizer_json() {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..94u32)
        .map(|i| (char::from_u32(0x21 + i).unwrap().to_string(), i.into()))
        .collect();
    let seed = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": ["! \"", "# $"]}
    })
    .to_string();
    // Two inputs that made tokenizers 0.22 panic (fuzzing found them): refused with an error.
    let cut = &seed.as_bytes()[..seed.find("\"decoder\"").unwrap() + 24];
    let precompiled = seed.replace(
        "\"normalizer\":null",
        "\"normalizer\":{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"AAAA\"}",
    );
    assert!(precompiled.contains("Precompiled"));
    for input in [cut, precompiled.as_bytes()] {
        assert!(webtune::Tokenizer::from_json("tokenizer.json", input, None).is_err());
    }
    run(bodies::tokenizer_json, &[seed.into_bytes()], 1000);
}

#[test]
fn text() {
    let seeds = [
        "the cat sat on the mat.\nAnd the dog, too: ½ 日本語\n"
            .repeat(10)
            .into_bytes(),
        b"\xef\xbb\xbfwith a BOM\r\nand CRLF\r\n".to_vec(),
    ];
    run(bodies::text, &seeds, 500);
}

#[test]
fn checkpoint() {
    // A real checkpoint: two steps of the tiny model on the text bodies::checkpoint resumes with.
    use webtune::spec::RunSpec;
    use webtune::train::Trainer;
    let device = webtune::device::cpu().autodiff();
    let mut base =
        webtune::BaseModel::from_gguf("tiny.gguf", bodies::TINY_GGUF.to_vec(), &device).unwrap();
    let mut spec = RunSpec::default();
    spec.data.seq_len = 16;
    spec.train.steps = 4;
    spec.train.batch_size = 2;
    let data = bodies::fixed_text_windows(&base.tokenizer, &spec).unwrap();
    webtune::lora::attach(&mut base.model, &spec.lora, 0).unwrap();
    let name = base.name.clone();
    let mut t = Trainer::new(base.model, data, spec).unwrap();
    pollster::block_on(t.step()).unwrap();
    pollster::block_on(t.step()).unwrap();
    let seed = pollster::block_on(t.checkpoint(&name)).unwrap();
    // The seed itself resumes (so mutations explore past the parser).
    bodies::checkpoint(&seed);
    run(bodies::checkpoint, &[seed], 600);
}

#[test]
fn chat_data() {
    let with = |kind: u8, bytes: &[u8]| [&[kind][..], bytes].concat();
    let seeds = [
        with(0, &read("chat/records.jsonl")),
        with(
            1,
            br#"[{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}, {"prompt": "2+2?", "completion": "4"}]"#,
        ),
        with(2, b"question,answer\n\"What, then?\",\"Then \"\"this\"\".\"\nWhy?,Because.\n"),
        with(3, b"instruction\tinput\toutput\nSay hi\t\tHi.\nAdd\t2 2\t4\n"),
    ];
    run(bodies::chat_data, &seeds, 300);
}

#[test]
fn zip() {
    let stored = webtune::formats::zip::write_stored(&[
        ("adapter/adapter_config.json", b"{\"r\": 8}"),
        ("adapter/adapter_model.safetensors", &[7; 64]),
    ]);
    run(bodies::zip, &[stored], 1000);
}

#[test]
fn run_spec() {
    let spec = webtune::spec::RunSpec::default().to_json().into_bytes();
    run(bodies::run_spec, &[spec], 1000);
}
