//! Chat prompts for instruct models: the model's own Jinja chat template (as transformers'
//! `apply_chat_template` renders it), or ChatML when the model ships none.

use minijinja::{Environment, context};
use serde::Serialize;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
}

/// Template instructions one rendering may run (real chat templates need a few thousand).
const TEMPLATE_FUEL: u64 = 1_000_000;

/// ChatML: the chat format of SmolLM2, Qwen and others (`<|im_start|>role\ncontent<|im_end|>`).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The template of a model that ships none (GPT-2, a base model's folder): plain text a model
/// without chat tokens can read and learn, each turn under its role's name, the turns a blank
/// line apart, the assistant's ended by the end-of-text token, so that a fine-tuned model learns
/// to end its answers (and generation stops there):
///
/// ```text
/// System: {system}
///
/// User: {user}
///
/// Assistant: {assistant}<eos>
/// ```
///
/// A turn ends at the end-of-text token, not at the blank line: the conversation up to a turn
/// then tokenizes as the start of the whole one (a special token cuts the text; a blank line
/// before the next turn's name would tokenize otherwise at the end of the text than inside it).
pub const PLAIN: &str = "{% for message in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}{% if message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% else %}{{ message['role'] | capitalize }}{{ ': ' + message['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '\\n\\nAssistant:' if messages else 'Assistant:' }}{% endif %}";

/// Renders `messages` with `template`, ending with the assistant's turn when
/// `add_generation_prompt` is set.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    // A template comes inside a model file, from anyone: bound its work and its nesting, so a
    // template of nested loops fails with a message instead of running forever.
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(64);
    // HF templates are written for Python's Jinja2: string methods like .strip() and .startswith().
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let bad = |e: minijinja::Error| Error::Invalid(format!("the chat template failed: {e}"));
    env.add_template("chat", template).map_err(bad)?;
    let tmpl = env.get_template("chat").map_err(bad)?;
    tmpl.render(context! {
        messages => minijinja::Value::from(minijinja::value::Serde(messages)),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(bad)
}

/// A conversation rendered for training: the text, and the byte ranges of it that are the
/// assistant's (what a fine-tuned model should say: each assistant turn's content and what its
/// template closes the turn with, such as `<|im_end|>`).
///
/// A turn's range is what the template adds between the conversation up to it with the
/// assistant's generation prompt and the conversation through it: as TRL takes the completion of
/// a prompt-completion record. The template must render a conversation's beginning the same
/// whatever follows (all common templates do); one that does not is an error.
pub fn render_for_training(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
) -> Result<(String, Vec<std::ops::Range<usize>>)> {
    let full = render(template, messages, false, bos_token, eos_token)?;
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = render(template, &messages[..i], true, bos_token, eos_token)?;
        let through = render(template, &messages[..=i], false, bos_token, eos_token)?;
        if !through.starts_with(&prompt) || !full.starts_with(&through) {
            return Err(Error::Invalid(format!(
                "the chat template renders the conversation's turn {} differently once more \
                 turns follow, so its answer cannot be told apart from the rest",
                i + 1
            )));
        }
        if through.len() > prompt.len() {
            spans.push(prompt.len()..through.len());
        }
    }
    Ok((full, spans))
}
