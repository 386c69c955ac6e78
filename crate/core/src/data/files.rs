//! A file a person adds, read as its format says: plain text, or chat data's records rendered
//! with the model's chat template. The one path the command line, the page and the JS API read
//! files by.

use super::records::{self, CsvColumns, FileFormat, Problem, RecordKind};
use super::{Document, ExampleFile, PreviewPart, Skipped, tokenize_files};
use crate::base_model::BaseModel;
use crate::error::Result;

/// A file as added: how it was read, its tokens or examples, or why it was skipped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TextInfo {
    pub name: String,
    /// Tokens of plain text, or of all of chat data's examples.
    pub tokens: Option<usize>,
    pub skipped: Option<String>,
    /// How it was read: plain text, or records (JSON Lines, JSON, CSV).
    pub format: FileFormat,
    /// Chat data: the kinds of records found.
    pub record_kinds: Vec<RecordKind>,
    /// Chat data: the examples read.
    pub examples: Option<usize>,
    /// Chat data: the records that could not be read (the first [`MAX_PROBLEMS_SHOWN`]), with
    /// their lines; `problem_count` counts them all.
    pub problems: Vec<Problem>,
    pub problem_count: usize,
    /// A CSV file's columns (to choose the prompt's and the response's from).
    pub columns: Vec<String>,
    /// Chat data: its first example as training sees it, the learned parts marked.
    pub preview: Vec<PreviewPart>,
}

/// Problems of a file a [`TextInfo`] lists (the count says how many there are).
pub const MAX_PROBLEMS_SHOWN: usize = 20;

/// How to read a file ([`read_file`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileOptions {
    /// None: by its name (`.jsonl`, `.json`, `.csv` / `.tsv`: records; else plain text).
    pub format: Option<FileFormat>,
    /// A CSV file's prompt and response columns (None: found by their names).
    pub columns: CsvColumns,
}

/// What a usable file became.
pub enum Read {
    Text(Document),
    Chat(ExampleFile),
}

/// Reads the file `name` for `base`'s tokenizer and chat template: the format `options` says,
/// else the one its name says. Returns what the page shows of it, and what trains (None: the
/// file is unusable, `TextInfo::skipped` says why).
pub fn read_file(
    name: &str,
    bytes: &[u8],
    options: &FileOptions,
    base: &BaseModel,
) -> Result<(TextInfo, Option<Read>)> {
    let format = options
        .format
        .unwrap_or_else(|| FileFormat::from_name(name));
    let mut info = TextInfo {
        name: name.into(),
        tokens: None,
        skipped: None,
        format,
        record_kinds: Vec::new(),
        examples: None,
        problems: Vec::new(),
        problem_count: 0,
        columns: Vec::new(),
        preview: Vec::new(),
    };
    if format == FileFormat::Text {
        let (docs, skipped): (Vec<Document>, Vec<Skipped>) =
            tokenize_files([(name, bytes)], &base.tokenizer);
        return Ok(
            match (docs.into_iter().next(), skipped.into_iter().next()) {
                (Some(doc), _) => {
                    info.tokens = Some(doc.tokens.len());
                    (info, Some(Read::Text(doc)))
                }
                (None, s) => {
                    info.skipped = Some(s.map_or("the file has no text".into(), |s| s.reason));
                    (info, None)
                }
            },
        );
    }
    let text = match super::check_text(bytes) {
        Ok(text) => text.strip_prefix('\u{feff}').unwrap_or(text),
        Err(reason) => {
            info.skipped = Some(reason);
            return Ok((info, None));
        }
    };
    let read = match format {
        FileFormat::JsonLines => Ok(records::json_lines(text)),
        FileFormat::Json => records::json(text),
        FileFormat::Csv => {
            let tab = name.to_ascii_lowercase().ends_with(".tsv");
            info.columns = records::csv_header(text, tab);
            records::csv(text, tab, &options.columns)
        }
        FileFormat::Text => unreachable!("plain text is read above"),
    };
    let mut recs = match read {
        Ok(r) => r,
        Err(reason) => {
            info.skipped = Some(reason);
            return Ok((info, None));
        }
    };
    let template = base.chat_template();
    let [bos, eos] = base.template_tokens();
    let (examples, mut problems) =
        super::tokenize_conversations(&recs.conversations, template, [&bos, &eos], &base.tokenizer);
    problems.append(&mut recs.problems);
    problems.sort_by_key(|p| p.line);
    info.record_kinds = recs.kinds;
    info.problem_count = problems.len();
    info.problems = problems.iter().take(MAX_PROBLEMS_SHOWN).cloned().collect();
    if examples.is_empty() {
        info.skipped = Some(match problems.first() {
            Some(p) => format!(
                "no record could be read ({} problem(s); line {}: {})",
                problems.len(),
                p.line,
                p.message
            ),
            None => "the file has no records".to_string(),
        });
        return Ok((info, None));
    }
    if let Some(c) = recs
        .conversations
        .iter()
        .find(|c| c.line == examples[0].line)
    {
        info.preview = super::preview(&c.messages, template, [&bos, &eos])?;
    }
    info.examples = Some(examples.len());
    info.tokens = Some(examples.iter().map(|e| e.tokens.len()).sum());
    let file = ExampleFile {
        name: name.to_string(),
        examples,
        problems,
    };
    Ok((info, Some(Read::Chat(file))))
}
