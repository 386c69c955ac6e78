//! Training data: files -> token documents (plain text) or examples (chat data, [`records`])
//! -> fixed-length windows -> a train/validation split -> shuffled batches.
//!
//! Plain text is one stream of tokens cut into windows. Chat data is one window per example:
//! the conversation rendered with the model's chat template, its tokens outside the assistant's
//! turns marked [`NOT_TRAINED`] (read, never a target), cut to the window or padded to it.
//! Files that are empty, binary or not UTF-8 are reported by name and skipped; the rest go on.

pub mod files;
pub mod records;

use serde::{Deserialize, Serialize};

use crate::chat::Message;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::spec::{DataSpec, Malformed, TrainOn};
use crate::tokenizer::Tokenizer;
use records::{Conversation, Problem};

/// Set on a window's token that is read as input but is never a target (a prompt's token,
/// padding): ids stay below 2^21 ([`crate::limits::MAX_VOCAB`]), so the bit is free.
/// [`crate::train::batch_tensors`] turns such a target into [`crate::kernels::IGNORED_TARGET`].
pub const NOT_TRAINED: u32 = 1 << 31;

/// A window token's id.
pub fn token_id(t: u32) -> u32 {
    t & !NOT_TRAINED
}

/// Whether a window's token is a target the loss learns.
pub fn is_trained(t: u32) -> bool {
    t & NOT_TRAINED == 0
}

/// The targets a window's loss learns (its tokens after the first, not [`NOT_TRAINED`]).
pub fn trained_targets(window: &[u32]) -> usize {
    window.iter().skip(1).filter(|&&t| is_trained(t)).count()
}

/// One example of chat data, tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The rendered conversation's tokens, [`NOT_TRAINED`] on those outside the assistant's turns.
    pub tokens: Vec<u32>,
    /// Its line (row, item) in its file.
    pub line: usize,
    /// The user's message its first answer replies to: what a person may ask the model to see
    /// whether training helped (held-out examples' prompts).
    pub prompt: String,
}

/// A file of chat data: its examples, and the records that could not be read.
#[derive(Debug, Clone)]
pub struct ExampleFile {
    pub name: String,
    pub examples: Vec<Example>,
    pub problems: Vec<Problem>,
}

/// What the examples of chat data became in a dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleCounts {
    pub train: usize,
    pub val: usize,
    /// Longer than a window: cut to its first `seq_len + 1` tokens (its end not learned).
    pub truncated: usize,
    /// Nothing of its answers within the window (the prompt fills it): left out.
    pub dropped: usize,
}

/// Renders each conversation with `template` (the model's chat template, [`crate::chat`]) and
/// tokenizes it, marking the tokens outside the assistant's turns [`NOT_TRAINED`]. A
/// conversation that does not render, or has no token to learn, is a problem of its line.
pub fn tokenize_conversations(
    conversations: &[Conversation],
    template: &str,
    [bos, eos]: [&str; 2],
    tokenizer: &Tokenizer,
) -> (Vec<Example>, Vec<Problem>) {
    let mut examples = Vec::with_capacity(conversations.len());
    let mut problems = Vec::new();
    for c in conversations {
        let example = crate::chat::render_for_training(template, &c.messages, bos, eos).and_then(
            |(text, spans)| {
                let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
                let tokens: Vec<u32> = ids
                    .iter()
                    .zip(&offsets)
                    .map(|(&id, &(start, _))| {
                        if spans.iter().any(|s| s.contains(&start)) {
                            id
                        } else {
                            id | NOT_TRAINED
                        }
                    })
                    .collect();
                Ok(tokens)
            },
        );
        match example {
            Ok(tokens) if trained_targets(&tokens) > 0 => examples.push(Example {
                tokens,
                line: c.line,
                prompt: first_prompt(&c.messages),
            }),
            Ok(_) => problems.push(Problem {
                line: c.line,
                message: "its answer has no token to learn".to_string(),
            }),
            Err(e) => problems.push(Problem {
                line: c.line,
                message: e.to_string(),
            }),
        }
    }
    (examples, problems)
}

/// The last user message before a conversation's first answer (empty without one).
fn first_prompt(messages: &[Message]) -> String {
    let first_answer = messages
        .iter()
        .position(|m| m.role == "assistant")
        .unwrap_or(messages.len());
    messages[..first_answer]
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or_else(String::new, |m| m.content.clone())
}

/// A conversation as the page previews it: the rendered text in pieces, each learned or not
/// (the assistant's turns, with what the template closes them with).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviewPart {
    pub text: String,
    pub trained: bool,
}

/// [`PreviewPart`]s of `messages` rendered with `template`.
pub fn preview(
    messages: &[Message],
    template: &str,
    [bos, eos]: [&str; 2],
) -> Result<Vec<PreviewPart>> {
    let (text, spans) = crate::chat::render_for_training(template, messages, bos, eos)?;
    let mut parts = Vec::new();
    let mut at = 0;
    for s in spans {
        if s.start > at {
            parts.push(PreviewPart {
                text: text[at..s.start].to_string(),
                trained: false,
            });
        }
        parts.push(PreviewPart {
            text: text[s.clone()].to_string(),
            trained: true,
        });
        at = s.end;
    }
    if at < text.len() {
        parts.push(PreviewPart {
            text: text[at..].to_string(),
            trained: false,
        });
    }
    Ok(parts)
}

/// A text file's tokens.
#[derive(Debug, Clone)]
pub struct Document {
    pub name: String,
    pub tokens: Vec<u32>,
}

/// A file that was left out, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// Why a file's bytes are not usable text, if they are not.
pub fn check_text(bytes: &[u8]) -> std::result::Result<&str, String> {
    let max = crate::limits::MAX_TEXT_BYTES;
    if bytes.len() > max {
        return Err(format!(
            "the file is {} MB, more than the {} MB a text file may have; split it into smaller files",
            bytes.len() >> 20,
            max >> 20
        ));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("the file is empty".to_string());
    }
    // UTF-16 (Windows' "Unicode" text) has NUL bytes too: named, not called binary.
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err("the file is UTF-16 text; save it as UTF-8".to_string());
    }
    // NUL bytes never occur in text; they are the surest sign of a binary file.
    if bytes.contains(&0) {
        return Err("the file looks binary (it contains NUL bytes), not text".to_string());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.valid_up_to()
        )
    })?;
    let control = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{c}'))
        .count();
    if control * 20 > text.chars().count() {
        return Err("the file looks binary (many control characters), not text".to_string());
    }
    Ok(text)
}

/// Tokenizes each file; unusable files land in the skipped list with their reason.
pub fn tokenize_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    tokenizer: &Tokenizer,
) -> (Vec<Document>, Vec<Skipped>) {
    let mut docs = Vec::new();
    let mut skipped = Vec::new();
    for (name, bytes) in files {
        let outcome = check_text(bytes).and_then(|text| {
            // A leading BOM is not part of the text.
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            tokenizer.encode_long(text).map_err(|e| e.to_string())
        });
        match outcome {
            Ok(tokens) if !tokens.is_empty() => docs.push(Document {
                name: name.to_string(),
                tokens,
            }),
            Ok(_) => skipped.push(Skipped {
                name: name.to_string(),
                reason: "the file has no text".to_string(),
            }),
            Err(reason) => skipped.push(Skipped {
                name: name.to_string(),
                reason,
            }),
        }
    }
    (docs, skipped)
}

/// Fixed-length windows for training and validation.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub seq_len: usize,
    /// Each `seq_len + 1` tokens.
    pub train: Vec<Vec<u32>>,
    pub val: Vec<Vec<u32>>,
    /// Names of the documents held out for validation (empty when split by position).
    pub val_documents: Vec<String>,
    /// What the examples of chat data became (all zero without chat data).
    pub examples: ExampleCounts,
    /// A few held-out examples' prompts ([`VAL_PROMPTS`] at most): questions the model was not
    /// trained on, to compare the base and the adapted model with.
    pub val_prompts: Vec<String>,
}

/// Held-out prompts a [`Dataset`] keeps.
pub const VAL_PROMPTS: usize = 3;

impl Dataset {
    /// Plain text's windows only: [`Self::build`] without chat data.
    pub fn split(docs: &[Document], eos: Option<u32>, cfg: &DataSpec, seed: u64) -> Result<Self> {
        Self::build(docs, &[], eos, cfg, seed)
    }

    /// The windows of plain text (`docs`) and of chat data (`chats`), split for validation:
    ///
    /// - `val_file` set: that file (text or chat data) is the validation set, the rest trains;
    /// - else plain text by document when there are several (whole documents held out, chosen
    ///   with `seed`), or by position (the last `val_fraction` of the one document), documents
    ///   joined with `eos` between them; and chat data by example (`val_fraction` of them,
    ///   chosen with `seed`, never all).
    ///
    /// An example is one window: cut to `seq_len + 1` tokens when longer (counted), padded with
    /// `eos` (not trained) when shorter, left out when nothing it answers is within the window
    /// (counted). With `train_on: all` every token of it is learned, not only the answers.
    pub fn build(
        docs: &[Document],
        chats: &[ExampleFile],
        eos: Option<u32>,
        cfg: &DataSpec,
        seed: u64,
    ) -> Result<Self> {
        if cfg.seq_len < 2 {
            return Err(Error::Invalid(
                "the sequence length must be at least 2".into(),
            ));
        }
        if cfg.malformed == Malformed::Refuse
            && let Some((file, p)) = chats
                .iter()
                .find_map(|f| f.problems.first().map(|p| (&f.name, p)))
        {
            return Err(Error::Invalid(format!(
                "{file}, line {}: {} (data.malformed is \"refuse\": fix the line, or skip such \
                 lines)",
                p.line, p.message
            )));
        }
        let chats: Vec<&ExampleFile> = chats.iter().filter(|f| !f.examples.is_empty()).collect();
        if docs.is_empty() && chats.is_empty() {
            return Err(Error::Invalid("there is no usable text to train on".into()));
        }
        if let Some(name) = &cfg.val_file {
            let known = docs
                .iter()
                .map(|d| &d.name)
                .chain(chats.iter().map(|f| &f.name));
            if !known.clone().any(|n| n == name) {
                let names: Vec<&str> = known.map(String::as_str).collect();
                return Err(Error::Invalid(format!(
                    "data.val_file is `{name}`, and no file added has that name (the files: {})",
                    names.join(", ")
                )));
            }
        }
        let (mut train, mut val, val_documents) = Self::text_windows(docs, eos, cfg, seed)?;
        let pad = eos.unwrap_or(0) | NOT_TRAINED;
        let mut counts = ExampleCounts::default();
        let mut window = |e: &Example| -> Option<Vec<u32>> {
            let mut w: Vec<u32> = e.tokens.iter().take(cfg.seq_len + 1).copied().collect();
            if e.tokens.len() > cfg.seq_len + 1 {
                counts.truncated += 1;
            }
            if cfg.train_on == TrainOn::All {
                w.iter_mut().for_each(|t| *t = token_id(*t));
            }
            if trained_targets(&w) == 0 {
                counts.dropped += 1;
                return None;
            }
            w.resize(cfg.seq_len + 1, pad);
            Some(w)
        };
        let (train_examples, val_examples) = split_examples(&chats, cfg, seed);
        for e in train_examples {
            if let Some(w) = window(e) {
                train.push(w);
                counts.train += 1;
            }
        }
        let mut val_prompts: Vec<String> = Vec::new();
        for e in val_examples {
            if let Some(w) = window(e) {
                val.push(w);
                counts.val += 1;
                if val_prompts.len() < VAL_PROMPTS
                    && !e.prompt.trim().is_empty()
                    && !val_prompts.contains(&e.prompt)
                {
                    val_prompts.push(e.prompt.clone());
                }
            }
        }
        let mut val_documents = val_documents;
        if let Some(name) = &cfg.val_file
            && chats.iter().any(|f| &f.name == name)
        {
            val_documents.push(name.clone());
        }
        if train.is_empty() {
            let detail = if counts.dropped > 0 {
                format!(
                    "{} example(s) left out: their prompt fills the window of {} tokens, so \
                     nothing of their answer would be learned; raise the sequence length",
                    counts.dropped,
                    cfg.seq_len + 1
                )
            } else {
                format!(
                    "too few tokens for one window of {} tokens: add text or lower the sequence \
                     length",
                    cfg.seq_len + 1
                )
            };
            return Err(Error::Invalid(format!(
                "there is nothing to train on: {detail}"
            )));
        }
        Ok(Self {
            seq_len: cfg.seq_len,
            train,
            val,
            val_documents,
            examples: counts,
            val_prompts,
        })
    }

    /// The windows of plain text: train, validation, the documents held out.
    fn text_windows(
        docs: &[Document],
        eos: Option<u32>,
        cfg: &DataSpec,
        seed: u64,
    ) -> Result<(Windows, Windows, Vec<String>)> {
        if docs.is_empty() {
            return Ok((Vec::new(), Vec::new(), Vec::new()));
        }
        let total: usize = docs.iter().map(|d| d.tokens.len()).sum();
        let want_val = ((total as f64) * cfg.val_fraction).round() as usize;
        let (train_docs, val_docs): (Vec<&Document>, Vec<&Document>) =
            if let Some(name) = &cfg.val_file {
                docs.iter().partition(|d| &d.name != name)
            } else if docs.len() >= 2 && want_val > 0 {
                let mut order: Vec<usize> = (0..docs.len()).collect();
                shuffle(&mut order, &mut Rng::new(seed));
                let mut val = Vec::new();
                let mut held = 0;
                for &i in &order {
                    // Hold out documents until the share is reached; never all of them.
                    if held >= want_val || val.len() + 1 == docs.len() {
                        break;
                    }
                    val.push(i);
                    held += docs[i].tokens.len();
                }
                let train = (0..docs.len())
                    .filter(|i| !val.contains(i))
                    .map(|i| &docs[i])
                    .collect();
                (train, val.iter().map(|&i| &docs[i]).collect())
            } else {
                (docs.iter().collect(), Vec::new())
            };

        let join = |ds: &[&Document]| {
            let mut out = Vec::new();
            for (k, d) in ds.iter().enumerate() {
                if k > 0
                    && let Some(eos) = eos
                {
                    out.push(eos);
                }
                out.extend(&d.tokens);
            }
            out
        };
        let (train_tokens, val_tokens, val_documents) = if cfg.val_file.is_some() {
            let names = val_docs.iter().map(|d| d.name.clone()).collect();
            (join(&train_docs), join(&val_docs), names)
        } else if val_docs.is_empty() {
            let all = join(&train_docs);
            let cut = all.len() - want_val.min(all.len());
            (all[..cut].to_vec(), all[cut..].to_vec(), Vec::new())
        } else {
            let names = val_docs.iter().map(|d| d.name.clone()).collect();
            (join(&train_docs), join(&val_docs), names)
        };
        Ok((
            windows(&train_tokens, cfg.seq_len),
            windows(&val_tokens, cfg.seq_len),
            val_documents,
        ))
    }

    /// The targets training learns: a window's tokens after its first, but for chat data's
    /// prompts and padding.
    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(|w| trained_targets(w)).sum()
    }

    /// The targets validation scores.
    pub fn val_tokens(&self) -> usize {
        self.val.iter().map(|w| trained_targets(w)).sum()
    }
}

/// Windows of tokens, each `seq_len + 1` long.
type Windows = Vec<Vec<u32>>;

/// Examples with their place among all.
type Numbered<'a> = Vec<(usize, &'a Example)>;

/// Chat data's examples split into training and validation: the file named `val_file`, or
/// `val_fraction` of all examples (rounded, never all of them) chosen with `seed`.
fn split_examples<'a>(
    chats: &[&'a ExampleFile],
    cfg: &DataSpec,
    seed: u64,
) -> (Vec<&'a Example>, Vec<&'a Example>) {
    if let Some(name) = &cfg.val_file {
        let (val, train): (Vec<&ExampleFile>, Vec<&ExampleFile>) =
            chats.iter().partition(|f| &f.name == name);
        let all = |fs: Vec<&'a ExampleFile>| fs.into_iter().flat_map(|f| &f.examples).collect();
        return (all(train), all(val));
    }
    let all: Vec<&Example> = chats.iter().flat_map(|f| &f.examples).collect();
    let n = all.len();
    let want = ((n as f64) * cfg.val_fraction).round() as usize;
    let n_val = want.min(n.saturating_sub(1));
    // Which examples are held out: chosen with the crate's RNG (under another stream than the
    // text's documents' choice); both sets keep the files' order.
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut Rng::new(seed ^ 0xe8a3_91c0_5d2b_7f41));
    let mut held = vec![false; n];
    order[n - n_val..].iter().for_each(|&i| held[i] = true);
    let (val, train): (Numbered<'a>, Numbered<'a>) =
        all.into_iter().enumerate().partition(|(i, _)| held[*i]);
    let strip = |v: Numbered<'a>| v.into_iter().map(|(_, e)| e).collect();
    (strip(train), strip(val))
}

/// Non-overlapping windows of `seq_len + 1` tokens (consecutive windows share one token, so every
/// token is a target once). A short tail that fills no window is dropped.
fn windows(tokens: &[u32], seq_len: usize) -> Vec<Vec<u32>> {
    if tokens.len() < seq_len + 1 {
        return Vec::new();
    }
    (0..=(tokens.len() - seq_len - 1) / seq_len)
        .map(|i| tokens[i * seq_len..i * seq_len + seq_len + 1].to_vec())
        .collect()
}

/// Fisher-Yates with the crate's own RNG, so a seed gives the same order on every platform.
pub fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Yields batches of window indices, reshuffled every epoch. Its whole state is saved in a
/// checkpoint, so a resumed run reads the same batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchOrder {
    n: usize,
    batch: usize,
    order: Vec<usize>,
    pos: usize,
    pub epoch: usize,
    rng: Rng,
}

impl BatchOrder {
    pub fn new(n: usize, batch: usize, seed: u64) -> Self {
        let mut me = Self {
            n,
            batch: batch.max(1),
            order: Vec::new(),
            pos: 0,
            epoch: 0,
            rng: Rng::new(seed ^ 0x5eed_ba7c),
        };
        me.reshuffle();
        me
    }

    /// Whether this (restored) order fits `n` windows in batches of `batch`: a checkpoint is a
    /// file, and a broken one must not index out of bounds.
    pub fn fits(&self, n: usize, batch: usize) -> bool {
        let mut seen = vec![false; n];
        self.n == n
            && self.batch == batch.max(1)
            && self.order.len() == n
            && self.pos <= n
            && self
                .order
                .iter()
                .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
    }

    fn reshuffle(&mut self) {
        self.order = (0..self.n).collect();
        shuffle(&mut self.order, &mut self.rng);
        self.pos = 0;
    }

    /// The next `batch` window indices (wrapping into a new epoch as needed).
    pub fn next_batch(&mut self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.batch);
        while out.len() < self.batch && self.n > 0 {
            if self.pos == self.order.len() {
                self.epoch += 1;
                self.reshuffle();
            }
            out.push(self.order[self.pos]);
            self.pos += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, n: usize, start: u32) -> Document {
        Document {
            name: name.into(),
            tokens: (start..start + n as u32).collect(),
        }
    }

    #[test]
    fn bad_files_are_named_with_a_reason() {
        assert!(check_text(b"  \n").unwrap_err().contains("empty"));
        assert!(
            check_text(b"PK\x03\x04\x00\x00")
                .unwrap_err()
                .contains("binary")
        );
        assert!(check_text(b"caf\xe9").unwrap_err().contains("not UTF-8"));
        assert!(
            check_text(b"\xff\xfeh\x00i\x00")
                .unwrap_err()
                .contains("UTF-16")
        );
        assert!(check_text("ok, café".as_bytes()).is_ok());
    }

    #[test]
    fn several_documents_split_by_document() {
        let docs: Vec<Document> = (0..10)
            .map(|i| doc(&format!("{i}.txt"), 100, i * 1000))
            .collect();
        let cfg = DataSpec {
            seq_len: 9,
            val_fraction: 0.2,
            ..DataSpec::default()
        };
        let ds = Dataset::split(&docs, Some(7), &cfg, 3).unwrap();
        assert_eq!(ds.val_documents.len(), 2);
        // No validation token comes from a training document.
        let val_tokens: std::collections::HashSet<u32> = ds
            .val
            .iter()
            .flatten()
            .copied()
            .filter(|&t| t != 7)
            .collect();
        for w in &ds.train {
            assert_eq!(w.len(), 10);
            assert!(w.iter().all(|t| *t == 7 || !val_tokens.contains(t)));
        }
        // The seed picks which documents are held out.
        let other = Dataset::split(&docs, Some(7), &cfg, 4).unwrap();
        assert_ne!(ds.val_documents, other.val_documents);
        assert_eq!(
            ds.val_documents,
            Dataset::split(&docs, Some(7), &cfg, 3)
                .unwrap()
                .val_documents
        );
    }

    #[test]
    fn one_document_splits_by_position_and_windows_overlap_by_one() {
        let ds = Dataset::split(
            &[doc("a", 101, 0)],
            None,
            &DataSpec {
                seq_len: 10,
                val_fraction: 0.1,
                ..DataSpec::default()
            },
            0,
        )
        .unwrap();
        assert!(ds.val_documents.is_empty());
        assert_eq!(ds.train.len(), 9); // 91 tokens -> 9 windows of 11
        assert_eq!(ds.train[0], (0..11).collect::<Vec<u32>>());
        assert_eq!(ds.train[1][0], 10);
        assert_eq!(ds.val.len(), 0); // 10 tokens: too few for a window
        assert!(Dataset::split(&[doc("a", 5, 0)], None, &DataSpec::default(), 0).is_err());
    }

    #[test]
    fn batches_cover_every_window_each_epoch() {
        let mut order = BatchOrder::new(10, 4, 1);
        let mut seen: Vec<usize> = (0..5).flat_map(|_| order.next_batch()).collect();
        assert_eq!(order.epoch, 1);
        seen.truncate(10);
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }
}
