//! Text <-> token ids, identical to transformers: the HF `tokenizers` crate, built from a
//! `tokenizer.json` or from the vocabulary and merges stored in a GGUF file.

use serde_json::{Value as Json, json};

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

/// Each token's byte range in the text it came from.
pub type Offsets = Vec<(usize, usize)>;

/// A tokenizer and the special tokens a model needs around it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    file: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The Jinja chat template of instruct models, as in `tokenizer_config.json`.
    pub chat_template: Option<String>,
}

/// `tokenizers` 0.22 panics (an `expect`) instead of returning an error on two kinds of
/// tokenizer.json (found by `crate/fuzz`): JSON that ends inside the `decoder`, and a
/// `Precompiled` normalizer whose charsmap does not parse. Both are refused here first.
fn check_before_tokenizers(file: &str, bytes: &[u8]) -> Result<()> {
    let bad = |problem: String| Error::Tokenizer {
        file: file.to_string(),
        problem,
    };
    let json: Json = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not a valid tokenizer.json: {e}")))?;
    fn precompiled_ok(v: &Json) -> std::result::Result<(), String> {
        match v.get("type").and_then(Json::as_str) {
            Some("Precompiled") => {
                serde_json::from_value::<tokenizers::normalizers::Precompiled>(v.clone())
                    .map(|_| ())
                    .map_err(|e| format!("its Precompiled normalizer is broken: {e}"))
            }
            Some("Sequence") => v
                .get("normalizers")
                .and_then(Json::as_array)
                .map_or(Ok(()), |items| items.iter().try_for_each(precompiled_ok)),
            _ => Ok(()),
        }
    }
    json.get("normalizer")
        .map_or(Ok(()), precompiled_ok)
        .map_err(bad)
}

/// ggml token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

impl Tokenizer {
    /// From `tokenizer.json` bytes, with `tokenizer_config.json` (optional) for the special tokens
    /// and the chat template.
    pub fn from_json(file: &str, bytes: &[u8], tokenizer_config: Option<&str>) -> Result<Self> {
        // A byte-order mark some editors write is not JSON.
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let tokenizer_config = tokenizer_config.map(|t| t.strip_prefix('\u{feff}').unwrap_or(t));
        check_before_tokenizers(file, bytes)?;
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            file: file.to_string(),
            problem: format!("not a valid tokenizer.json: {e}"),
        })?;
        // A file's truncation and padding are for batching inputs to a model: applied here they
        // would cut a training text or a prompt to their length, or pad it, without a word.
        let _ = inner.with_truncation(None);
        inner.with_padding(None);
        let config: Json = match tokenizer_config {
            Some(text) => serde_json::from_str(text).map_err(|e| Error::Tokenizer {
                file: "tokenizer_config.json".to_string(),
                problem: format!("not valid JSON: {e}"),
            })?,
            None => Json::Null,
        };
        // Special tokens are strings, or {"content": ...} objects in older files.
        let token_id = |key: &str| {
            let v = config.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let bos_token_id = token_id("bos_token");
        let eos_token_ids = token_id("eos_token").into_iter().collect();
        // A string, or (newer files) a list of named templates: the one named "default".
        let chat_template = match config.get("chat_template") {
            Some(Json::String(t)) => Some(t.clone()),
            Some(Json::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(str::to_string),
            _ => None,
        };
        Ok(Self {
            inner,
            file: file.to_string(),
            bos_token_id,
            eos_token_ids,
            chat_template,
        })
    }

    /// From the `tokenizer.ggml.*` metadata of a GGUF file (byte-level BPE, `model = gpt2`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let file = gguf.file_name.as_str();
        let err = |problem: String| Error::Tokenizer {
            file: file.to_string(),
            problem,
        };
        let model = gguf
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("tokenizer.ggml.model is missing".into()))?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported from GGUF (supported: gpt2, i.e. \
                 byte-level BPE); open the model's tokenizer.json instead"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = gguf
                .get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| err(format!("{key} is missing")))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("{key} holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = match gguf.get("tokenizer.ggml.merges") {
            Some(_) => strings("tokenizer.ggml.merges")?,
            None => Vec::new(),
        };
        let types: Vec<i64> = match gguf
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            Some(arr) => arr
                .iter()
                .map(|v| v.as_u64().map(|x| x as i64).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");

        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            vocab.insert(token.clone(), json!(id));
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        let merges: Vec<Json> = merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(err(format!("merge `{m}` is not two tokens"))),
            })
            .collect::<Result<_>>()?;
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = gpt2_pre_tokenizer(pre, &byte_level).ok_or_else(|| {
            err(format!(
                "pre-tokenizer `{pre}` (tokenizer.ggml.pre) is not supported (supported: default, \
                 gpt2, smollm, starcoder, llama3, qwen2); open the model's tokenizer.json instead"
            ))
        })?;
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": byte_level,
            "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let inner = tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| err(format!("could not build the tokenizer: {e}")))?;
        // An id beyond u32 is no id at all; the vocabulary check refuses ids beyond the model's.
        let id = |key: &str| {
            gguf.get(&format!("tokenizer.ggml.{key}"))
                .and_then(|v| v.as_u64())
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        Ok(Self {
            inner,
            file: file.to_string(),
            bos_token_id: id("bos_token_id"),
            eos_token_ids: id("eos_token_id").into_iter().collect(),
            chat_template: gguf
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their ids;
    /// no BOS/EOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                file: self.file.clone(),
                problem: format!("could not encode: {e}"),
            })
    }

    /// [`Self::encode`] for text of any length (a file to train on): encoded in pieces of about
    /// [`PIECE_BYTES`], each cut at a space between two words. The tokenizer's transient memory
    /// (its `Encoding` keeps each token's string, offsets and masks: ~100 bytes a token, GBs for
    /// a 60 MB file at once) stays bounded; what is kept is the ids. With the byte-level BPE
    /// tokenizers of GPT-2, SmolLM, Llama 3 and Qwen2, whose pre-tokenizers start a piece at a
    /// space before a word, the ids are the whole text's (tests/all/tokenizer.rs). Others
    /// (SentencePiece's, which put a "▁" before each piece's start, or with a normalizer that
    /// could join across a cut) encode the text whole.
    pub fn encode_long(&self, text: &str) -> Result<Vec<u32>> {
        if self.cuts_keep_ids() {
            self.encode_in_pieces(text, PIECE_BYTES)
        } else {
            self.encode(text)
        }
    }

    /// Whether cutting text before a word leaves the ids as they were: a byte-level
    /// pre-tokenizer and no normalizer.
    pub fn cuts_keep_ids(&self) -> bool {
        let byte_level = self.inner.get_pre_tokenizer().is_some_and(|p| {
            serde_json::to_string(p).is_ok_and(|json| json.contains(r#""type":"ByteLevel""#))
        });
        byte_level && self.inner.get_normalizer().is_none()
    }

    /// [`Self::encode_long`] with pieces of about `piece` bytes.
    pub fn encode_in_pieces(&self, text: &str, piece: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let cut = if rest.len() <= piece {
                rest.len()
            } else {
                cut_point(rest, piece.max(4))
            };
            ids.extend(self.encode(&rest[..cut])?);
            rest = &rest[cut..];
        }
        Ok(ids)
    }

    /// [`Self::encode`], with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        self.inner
            .encode(text, false)
            .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
            .map_err(|e| Error::Tokenizer {
                file: self.file.clone(),
                problem: format!("could not encode: {e}"),
            })
    }

    /// Text of `ids`; with `skip_special_tokens`, control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer {
                file: self.file.clone(),
                problem: format!("could not decode: {e}"),
            })
    }

    /// The tokenizer as a `tokenizer.json` (for writing a model out).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| Error::Tokenizer {
            file: self.file.clone(),
            problem: format!("could not write tokenizer.json: {e}"),
        })
    }

    /// The `tokenizer_config.json` transformers reads next to `tokenizer.json`: special tokens
    /// and the chat template.
    pub fn config_json(&self) -> String {
        let token = |id: Option<u32>| id.and_then(|id| self.id_to_token(id));
        let mut config = json!({ "tokenizer_class": "PreTrainedTokenizerFast" });
        if let Some(bos) = token(self.bos_token_id) {
            config["bos_token"] = json!(bos);
        }
        if let Some(eos) = token(self.eos_token_ids.first().copied()) {
            config["eos_token"] = json!(eos);
        }
        if let Some(t) = &self.chat_template {
            config["chat_template"] = json!(t);
        }
        config.to_string()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest token id (added tokens included): ids need not be dense, so this can exceed
    /// the vocabulary size.
    pub fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).into_values().max()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The GPT-2 BPE files (`vocab.json` + `merges.txt`), as `GPT2TokenizerFast` builds them.
    pub fn from_gpt2_files(vocab_json: &str, merges_txt: &str) -> Result<Self> {
        let err = |problem: String| Error::Tokenizer {
            file: "vocab.json".to_string(),
            problem,
        };
        let vocab: Json =
            serde_json::from_str(vocab_json).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let merges: Vec<Json> = merges_txt
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .filter_map(|l| l.split_once(' ').map(|(a, b)| json!([a, b])))
            .collect();
        let eot = vocab.get("<|endoftext|>").and_then(|v| v.as_u64());
        // GPT-2's `<|endoftext|>`, and any other `<|...|>` control token a vocabulary of the same
        // kind has, are special: matched whole, never split by BPE.
        let mut added: Vec<Json> = vocab
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(token, _)| {
                token.len() > 4 && token.starts_with("<|") && token.ends_with("|>")
            })
            .filter_map(|(token, id)| id.as_u64().map(|id| (id, token)))
            .map(|(id, token)| {
                json!({"id": id, "content": token, "single_word": false,
                       "lstrip": false, "rstrip": false, "normalized": true, "special": true})
            })
            .collect();
        added.sort_by_key(|t| t["id"].as_u64());
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": byte_level,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "",
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        let inner = tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| err(format!("could not build the tokenizer: {e}")))?;
        let eot = eot.map(|v| v as u32);
        Ok(Self {
            inner,
            file: "vocab.json".to_string(),
            bos_token_id: eot,
            eos_token_ids: eot.into_iter().collect(),
            chat_template: None,
        })
    }
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, as a tokenizer.json fragment.
fn gpt2_pre_tokenizer(pre: &str, byte_level: &Json) -> Option<Json> {
    match pre {
        "default" | "gpt2" | "gpt-2" => Some(byte_level.clone()),
        // StarCoder-style vocabularies (SmolLM's among them) split digits one by one first.
        "smollm" | "starcoder" | "refact" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level,
            ],
        })),
        "llama3" | "llama-bpe" | "llama-v3" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ],
        })),
        // Qwen2's: Llama 3's with every numeral its own pre-token (llama.cpp's QWEN2).
        "qwen2" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            ],
        })),
        _ => None,
    }
}

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Bytes of text [`Tokenizer::encode_long`] encodes at once.
pub const PIECE_BYTES: usize = 1 << 18;

/// Where to end a piece of `text` of about `piece` bytes, in its second half: before the last
/// single space between two words, else after the last line break before a word (text without
/// spaces, e.g. Chinese), else at the last character boundary.
fn cut_point(text: &str, piece: usize) -> usize {
    let b = text.as_bytes();
    let word = |c: u8| !c.is_ascii_whitespace();
    let half = (piece / 2).max(1)..piece;
    half.clone()
        .rev()
        .find(|&i| b[i] == b' ' && word(b[i - 1]) && b.get(i + 1).is_some_and(|&c| word(c)))
        .or_else(|| half.rev().find(|&i| b[i - 1] == b'\n' && word(b[i])))
        .unwrap_or_else(|| {
            (1..=piece)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(1)
        })
}
