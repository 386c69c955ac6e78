//! Instruction and chat data: the records people export and fine-tuning tools read, as
//! conversations.
//!
//! A file of records is JSON Lines (`.jsonl`, `.ndjson`: one record a line), JSON (`.json`: an
//! array of records) or CSV (`.csv`, `.tsv`: a header, then a record a row, two of its columns
//! the prompt and the response). A record is one of:
//!
//! - `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`: the
//!   OpenAI / Hugging Face chat format (TRL's "conversational");
//! - `{"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}, ...]}`: ShareGPT;
//! - `{"prompt": "...", "completion": "..."}`, either side a string or a list of messages (TRL's
//!   "prompt-completion");
//! - `{"instruction": "...", "input": "...", "output": "..."}`: Alpaca (`input` optional).
//!
//! Every record becomes a [`Conversation`] with at least one assistant turn: what training
//! learns (the assistant's turns, [`crate::chat::render_for_training`]). A record that is not one
//! of these is a [`Problem`] naming its line (its row, or its item in a JSON array), never text
//! learned as it stands.

use serde_json::Value;

use crate::chat::Message;

/// How a file's bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// Plain text, learned as it is.
    Text,
    /// JSON Lines: a record a line.
    JsonLines,
    /// A JSON array of records.
    Json,
    /// Comma- (or tab-) separated values with a header: a record a row.
    Csv,
}

impl FileFormat {
    /// The format a file's name says (plain text unless it names a record format).
    pub fn from_name(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
        match ext {
            "jsonl" | "ndjson" => Self::JsonLines,
            "json" => Self::Json,
            "csv" | "tsv" => Self::Csv,
            _ => Self::Text,
        }
    }
}

/// Which record kind a file held (the page shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    Messages,
    ShareGpt,
    PromptCompletion,
    Alpaca,
    /// CSV rows, two columns.
    Columns,
}

/// One example: the turns of a conversation, at least one of them the assistant's.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// Where it came from: the line (JSON Lines), the row (CSV, the header being row 1) or the
    /// item (JSON, from 1).
    pub line: usize,
}

/// A record that could not be read, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// What a file of records gave.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub conversations: Vec<Conversation>,
    pub problems: Vec<Problem>,
    /// The kinds seen, in the order first seen.
    pub kinds: Vec<RecordKind>,
    /// A CSV file's header (the page offers its columns).
    pub columns: Vec<String>,
}

impl Records {
    fn push(&mut self, line: usize, record: Result<(RecordKind, Vec<Message>), String>) {
        match record {
            Ok((kind, messages)) => {
                if !self.kinds.contains(&kind) {
                    self.kinds.push(kind);
                }
                self.conversations.push(Conversation { messages, line });
            }
            Err(message) => self.problems.push(Problem { line, message }),
        }
    }
}

/// The CSV columns that hold the prompt and the response; None: found by their names
/// ([`PROMPT_COLUMNS`], [`RESPONSE_COLUMNS`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvColumns {
    pub prompt: Option<String>,
    pub response: Option<String>,
}

/// Column names taken for the prompt and the response when none are chosen (first match).
pub const PROMPT_COLUMNS: [&str; 6] = [
    "prompt",
    "instruction",
    "question",
    "input",
    "user",
    "query",
];
pub const RESPONSE_COLUMNS: [&str; 6] = [
    "completion",
    "response",
    "answer",
    "output",
    "assistant",
    "target",
];

/// Records of a JSON Lines file: blank lines are skipped, every other line is a record.
pub fn json_lines(text: &str) -> Records {
    let mut out = Records::default();
    for (i, line) in text.lines().enumerate() {
        let line_text = line.trim();
        if line_text.is_empty() {
            continue;
        }
        let record = serde_json::from_str::<Value>(line_text)
            .map_err(|e| format!("not JSON ({e})"))
            .and_then(|v| record(&v));
        out.push(i + 1, record);
    }
    out
}

/// Records of a JSON file: an array of records (a file of one record object is one record).
pub fn json(text: &str) -> Result<Records, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = Records::default();
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                out.push(i + 1, record(item));
            }
        }
        Value::Object(_) => out.push(1, record(&value)),
        _ => {
            return Err(
                "a JSON dataset is an array of records ({\"messages\": [...]}, {\"prompt\", \
                 \"completion\"} or {\"instruction\", \"output\"})"
                    .to_string(),
            );
        }
    }
    Ok(out)
}

/// A CSV file's header row (empty when it has none that reads).
pub fn csv_header(text: &str, tab: bool) -> Vec<String> {
    ::csv::ReaderBuilder::new()
        .delimiter(if tab { b'\t' } else { b',' })
        .flexible(true)
        .from_reader(text.as_bytes())
        .headers()
        .map(|h| h.iter().map(|c| c.trim().to_string()).collect())
        .unwrap_or_default()
}

/// Records of a CSV file (tab-separated when `tab`): a header row, then a record a row, from
/// the columns `columns` names (or finds). An error when the columns are not there.
pub fn csv(text: &str, tab: bool, columns: &CsvColumns) -> Result<Records, String> {
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(if tab { b'\t' } else { b',' })
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("its header row cannot be read: {e}"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let find = |chosen: &Option<String>, names: &[&str], what: &str| -> Result<usize, String> {
        match chosen {
            Some(c) => header.iter().position(|h| h == c).ok_or_else(|| {
                format!(
                    "it has no column `{c}` (its columns: {})",
                    header.join(", ")
                )
            }),
            None => names
                .iter()
                .find_map(|n| header.iter().position(|h| h.eq_ignore_ascii_case(n)))
                .ok_or_else(|| {
                    format!(
                        "choose its {what} column: none is named {} (its columns: {})",
                        names.join(", "),
                        header.join(", ")
                    )
                }),
        }
    };
    let prompt = find(&columns.prompt, &PROMPT_COLUMNS, "prompt")?;
    let response = find(&columns.response, &RESPONSE_COLUMNS, "response")?;
    if prompt == response {
        return Err("the prompt and the response must be two different columns".to_string());
    }
    let mut out = Records {
        columns: header,
        ..Records::default()
    };
    for (i, row) in reader.records().enumerate() {
        // The header is row 1.
        let line = row
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map_or(i + 2, |p| p.line() as usize);
        let record = row
            .map_err(|e| format!("the row cannot be read: {e}"))
            .and_then(|row| {
                let cell = |c: usize| row.get(c).unwrap_or("").to_string();
                exchange(cell(prompt), cell(response))
            })
            .map(|m| (RecordKind::Columns, m));
        out.push(line, record);
    }
    Ok(out)
}

/// A user prompt and the assistant's answer, both non-empty.
fn exchange(prompt: String, response: String) -> Result<Vec<Message>, String> {
    if prompt.trim().is_empty() {
        return Err("the prompt is empty".to_string());
    }
    if response.trim().is_empty() {
        return Err("the response is empty: there is nothing to learn".to_string());
    }
    Ok(vec![
        Message::new("user", prompt),
        Message::new("assistant", response),
    ])
}

/// One record, by the keys it has.
fn record(v: &Value) -> Result<(RecordKind, Vec<Message>), String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("a record is a JSON object, not {}", kind_of(v)));
    };
    let has = |k: &str| obj.contains_key(k);
    if has("messages") {
        let messages = message_list(&obj["messages"], "messages", Roles::OpenAi)?;
        Ok((RecordKind::Messages, conversation(messages)?))
    } else if has("conversations") {
        let messages = message_list(&obj["conversations"], "conversations", Roles::ShareGpt)?;
        Ok((RecordKind::ShareGpt, conversation(messages)?))
    } else if has("prompt") || has("completion") {
        let side = |key: &str, role: &str| -> Result<Vec<Message>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Err(format!("`{key}` is missing")),
                Some(Value::String(s)) => Ok(vec![Message::new(role, s.clone())]),
                Some(list @ Value::Array(_)) => message_list(list, key, Roles::OpenAi),
                Some(other) => Err(format!(
                    "`{key}` is {}, not a string or a list of messages",
                    kind_of(other)
                )),
            }
        };
        let mut messages = side("prompt", "user")?;
        let completion = side("completion", "assistant")?;
        if completion.iter().all(|m| m.role != "assistant") {
            return Err("`completion` has no assistant message: nothing to learn".to_string());
        }
        messages.extend(completion);
        Ok((RecordKind::PromptCompletion, conversation(messages)?))
    } else if has("instruction") || has("output") {
        let text = |key: &str| -> Result<String, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!("`{key}` is {}, not a string", kind_of(other))),
            }
        };
        let (instruction, input) = (text("instruction")?, text("input")?);
        let prompt = if input.trim().is_empty() {
            instruction
        } else {
            // Alpaca's own layout of an instruction with an input.
            format!("{instruction}\n\n{input}")
        };
        Ok((RecordKind::Alpaca, exchange(prompt, text("output")?)?))
    } else {
        let keys: Vec<String> = obj.keys().take(8).map(|k| format!("`{k}`")).collect();
        Err(format!(
            "no known keys (found {}; expected `messages`, `conversations`, `prompt` and \
             `completion`, or `instruction` and `output`)",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        ))
    }
}

/// A conversation worth learning: at least one assistant turn with text.
fn conversation(messages: Vec<Message>) -> Result<Vec<Message>, String> {
    if !messages
        .iter()
        .any(|m| m.role == "assistant" && !m.content.trim().is_empty())
    {
        return Err("it has no assistant message with text: nothing to learn".to_string());
    }
    Ok(messages)
}

#[derive(Clone, Copy)]
enum Roles {
    /// `role` / `content`, roles system, user, assistant (and tool, kept as it is).
    OpenAi,
    /// `from` / `value`, roles system, human, gpt.
    ShareGpt,
}

fn message_list(v: &Value, key: &str, roles: Roles) -> Result<Vec<Message>, String> {
    let Some(items) = v.as_array() else {
        return Err(format!("`{key}` is {}, not a list", kind_of(v)));
    };
    if items.is_empty() {
        return Err(format!("`{key}` is empty"));
    }
    let (role_key, content_key) = match roles {
        Roles::OpenAi => ("role", "content"),
        Roles::ShareGpt => ("from", "value"),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("`{key}` item {}", i + 1);
            let role = m
                .get(role_key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{at} has no `{role_key}` string"))?;
            let role = match (roles, role) {
                (Roles::ShareGpt, "human" | "user") => "user",
                (Roles::ShareGpt, "gpt" | "assistant" | "chatgpt" | "bing" | "bard") => "assistant",
                (_, "system" | "user" | "assistant" | "tool") => role,
                (_, other) => return Err(format!("{at} has the role `{other}`")),
            };
            let content = match m.get(content_key) {
                Some(Value::String(s)) => s.clone(),
                // The OpenAI format's content parts: their text, in order.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(
                        |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text") | None, Some(Value::String(t))) => Ok(t.as_str()),
                            _ => Err(format!("{at} has a content part that is not text")),
                        },
                    )
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                Some(other) => {
                    return Err(format!(
                        "{at}'s `{content_key}` is {}, not a string",
                        kind_of(other)
                    ));
                }
                None => return Err(format!("{at} has no `{content_key}`")),
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(c: &Conversation) -> Vec<(&str, &str)> {
        c.messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn every_record_kind_becomes_a_conversation() {
        let text = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}

{"prompt": "Capital of France?", "completion": "Paris."}
{"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}
{"instruction": "Translate", "input": "chat", "output": "cat"}
{"instruction": "Say hi", "output": "hi"}"#;
        let r = json_lines(text);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let c = &r.conversations;
        assert_eq!(c.len(), 6);
        assert_eq!(
            roles(&c[0]),
            [
                ("system", "Be brief."),
                ("user", "Hi"),
                ("assistant", "Hello")
            ]
        );
        assert_eq!(roles(&c[1]), [("user", "2+2?"), ("assistant", "4")]);
        assert_eq!(c[2].line, 4, "the blank line counts");
        assert_eq!(
            roles(&c[2]),
            [("user", "Capital of France?"), ("assistant", "Paris.")]
        );
        assert_eq!(roles(&c[3]), [("user", "Q"), ("assistant", "A")]);
        assert_eq!(
            roles(&c[4]),
            [("user", "Translate\n\nchat"), ("assistant", "cat")]
        );
        assert_eq!(roles(&c[5]), [("user", "Say hi"), ("assistant", "hi")]);
        assert_eq!(
            r.kinds,
            [
                RecordKind::Messages,
                RecordKind::ShareGpt,
                RecordKind::PromptCompletion,
                RecordKind::Alpaca
            ]
        );
    }

    #[test]
    fn bad_records_name_their_line_and_why() {
        let text = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n\
                    not json\n\
                    [1, 2]\n\
                    {\"text\": \"plain\"}\n\
                    {\"prompt\": \"Q\"}\n\
                    {\"prompt\": \"Q\", \"completion\": 5}\n\
                    {\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}\n\
                    {\"instruction\": \"Say\", \"output\": \"  \"}\n\
                    {\"prompt\": \"ok\", \"completion\": \"fine\"}";
        let r = json_lines(text);
        assert_eq!(r.conversations.len(), 1);
        assert_eq!(r.conversations[0].line, 9);
        let lines: Vec<usize> = r.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6, 7, 8]);
        let says = |line: usize, what: &str| {
            let p = &r.problems[line - 1];
            assert!(p.message.contains(what), "line {line}: {}", p.message);
        };
        says(1, "no assistant");
        says(2, "not JSON");
        says(3, "a list");
        says(4, "`text`");
        says(5, "`completion` is missing");
        says(6, "a number");
        says(7, "wizard");
        says(8, "empty");
    }

    #[test]
    fn a_json_file_is_an_array_of_records() {
        let r = json(r#"[{"prompt": "a", "completion": "b"}, {"x": 1}]"#).unwrap();
        assert_eq!(r.conversations.len(), 1);
        assert_eq!(r.problems[0].line, 2);
        assert!(json("42").unwrap_err().contains("array of records"));
        assert!(json("{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn csv_columns_are_found_by_name_or_chosen() {
        let text =
            "id,Question,Answer\n1,\"What, exactly?\",\"This.\"\n2,Why,\n3,\"multi\nline\",yes\n";
        let r = csv(text, false, &CsvColumns::default()).unwrap();
        assert_eq!(r.columns, ["id", "Question", "Answer"]);
        assert_eq!(r.conversations.len(), 2);
        assert_eq!(
            roles(&r.conversations[0]),
            [("user", "What, exactly?"), ("assistant", "This.")]
        );
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].line, 3);
        assert_eq!(r.conversations[1].line, 4);
        let picked = CsvColumns {
            prompt: Some("id".into()),
            response: Some("Question".into()),
        };
        let r = csv(text, false, &picked).unwrap();
        assert_eq!(
            roles(&r.conversations[0]),
            [("user", "1"), ("assistant", "What, exactly?")]
        );
        let e = csv("a,b\n1,2\n", false, &CsvColumns::default()).unwrap_err();
        assert!(
            e.contains("choose its prompt column") && e.contains("a, b"),
            "{e}"
        );
        let tabbed = csv("prompt\tresponse\nhi\tho\n", true, &CsvColumns::default()).unwrap();
        assert_eq!(
            roles(&tabbed.conversations[0]),
            [("user", "hi"), ("assistant", "ho")]
        );
    }

    #[test]
    fn names_say_the_format() {
        assert_eq!(FileFormat::from_name("chats.JSONL"), FileFormat::JsonLines);
        assert_eq!(FileFormat::from_name("a.json"), FileFormat::Json);
        assert_eq!(FileFormat::from_name("qa.tsv"), FileFormat::Csv);
        assert_eq!(FileFormat::from_name("notes.md"), FileFormat::Text);
        assert_eq!(FileFormat::from_name("README"), FileFormat::Text);
    }
}
