//! Training text: files -> token documents -> fixed-length windows -> a train/validation split
//! -> shuffled batches.
//!
//! Files that are empty, binary or not UTF-8 are reported by name and skipped; the rest go on.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;

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
            tokenizer.encode(text).map_err(|e| e.to_string())
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

/// How documents become windows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitConfig {
    /// Tokens a window feeds the model (each window holds seq_len + 1 tokens: inputs and targets).
    pub seq_len: usize,
    /// Share of tokens held out for validation.
    pub val_fraction: f64,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            seq_len: 128,
            val_fraction: 0.1,
            seed: 0,
        }
    }
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
}

impl Dataset {
    /// Splits by document when there are several (whole documents held out, chosen with the
    /// seed), else by position (the last `val_fraction` of the one document). Documents are joined
    /// with `eos` between them.
    pub fn split(docs: &[Document], eos: Option<u32>, cfg: &SplitConfig) -> Result<Self> {
        if cfg.seq_len < 2 {
            return Err(Error::Invalid(
                "the sequence length must be at least 2".into(),
            ));
        }
        if docs.is_empty() {
            return Err(Error::Invalid("there is no usable text to train on".into()));
        }
        let total: usize = docs.iter().map(|d| d.tokens.len()).sum();
        let want_val = ((total as f64) * cfg.val_fraction).round() as usize;
        let (train_docs, val_docs): (Vec<&Document>, Vec<&Document>) =
            if docs.len() >= 2 && want_val > 0 {
                let mut order: Vec<usize> = (0..docs.len()).collect();
                shuffle(&mut order, &mut Rng::new(cfg.seed));
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
        let (train_tokens, val_tokens, val_documents) = if val_docs.is_empty() {
            let all = join(&train_docs);
            let cut = all.len() - want_val.min(all.len());
            (all[..cut].to_vec(), all[cut..].to_vec(), Vec::new())
        } else {
            let names = val_docs.iter().map(|d| d.name.clone()).collect();
            (join(&train_docs), join(&val_docs), names)
        };
        let train = windows(&train_tokens, cfg.seq_len);
        if train.is_empty() {
            return Err(Error::Invalid(format!(
                "the training text has {} tokens, too few for one window of {} tokens: add text or \
                 lower the sequence length",
                train_tokens.len(),
                cfg.seq_len + 1
            )));
        }
        Ok(Self {
            seq_len: cfg.seq_len,
            train,
            val: windows(&val_tokens, cfg.seq_len),
            val_documents,
        })
    }

    pub fn train_tokens(&self) -> usize {
        self.train.len() * self.seq_len
    }

    pub fn val_tokens(&self) -> usize {
        self.val.len() * self.seq_len
    }
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
        assert!(check_text("ok, café".as_bytes()).is_ok());
    }

    #[test]
    fn several_documents_split_by_document() {
        let docs: Vec<Document> = (0..10)
            .map(|i| doc(&format!("{i}.txt"), 100, i * 1000))
            .collect();
        let cfg = SplitConfig {
            seq_len: 9,
            val_fraction: 0.2,
            seed: 3,
        };
        let ds = Dataset::split(&docs, Some(7), &cfg).unwrap();
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
        let other = Dataset::split(
            &docs,
            Some(7),
            &SplitConfig {
                seed: 4,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_ne!(ds.val_documents, other.val_documents);
        assert_eq!(
            ds.val_documents,
            Dataset::split(&docs, Some(7), &cfg).unwrap().val_documents
        );
    }

    #[test]
    fn one_document_splits_by_position_and_windows_overlap_by_one() {
        let ds = Dataset::split(
            &[doc("a", 101, 0)],
            None,
            &SplitConfig {
                seq_len: 10,
                val_fraction: 0.1,
                seed: 0,
            },
        )
        .unwrap();
        assert!(ds.val_documents.is_empty());
        assert_eq!(ds.train.len(), 9); // 91 tokens -> 9 windows of 11
        assert_eq!(ds.train[0], (0..11).collect::<Vec<u32>>());
        assert_eq!(ds.train[1][0], 10);
        assert_eq!(ds.val.len(), 0); // 10 tokens: too few for a window
        assert!(Dataset::split(&[doc("a", 5, 0)], None, &SplitConfig::default()).is_err());
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
