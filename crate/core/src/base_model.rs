//! A base model ready to run: config, frozen weights on a device, and tokenizer, loaded from a
//! GGUF file or from Hugging Face files (config.json, safetensors, tokenizer.json).
//!
//! Loading works on bytes, so the page (which gets files as buffers) and the command line share it.

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufCheckpoint, GgufFile, Value};
use crate::formats::safetensors::SafetensorsCheckpoint;
use crate::model::{CausalLM, ModelConfig};
use crate::tokenizer::Tokenizer;

/// A file given by name and contents.
pub struct NamedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl NamedFile {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            bytes,
        }
    }
}

/// A loaded base model.
pub struct BaseModel {
    /// What to call the model (the GGUF's `general.name`, or the file/folder name).
    pub name: String,
    pub config: ModelConfig,
    pub model: CausalLM,
    pub tokenizer: Tokenizer,
    /// The GGUF file's metadata, when the model came from one: a merged GGUF export reuses it
    /// (tokenizer, hyperparameters, chat template).
    pub gguf_metadata: Option<Vec<(String, Value)>>,
    /// The model's Hugging Face id (`org/name`), where known: the id it was fetched by, the hub
    /// cache folder it was read from, or what a GGUF file says it was converted from. An
    /// adapter's `base_model_name_or_path` ([`Self::base_model_id`]) is this, for PEFT to find
    /// the base by.
    pub hub_id: Option<String>,
}

/// `id` if it is a Hugging Face model id (`org/name`, of letters, digits, `-`, `_` and `.`).
pub fn hub_id(id: &str) -> Option<&str> {
    let (org, name) = id.split_once('/')?;
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 96
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (part(org) && part(name)).then_some(id)
}

/// The Hugging Face id a GGUF file names as its source: `general.source.huggingface.repository`,
/// or a `https://huggingface.co/org/name` repository URL (`general.repo_url`,
/// `general.source.repo_url`, as llama.cpp's converter writes them).
fn gguf_hub_id(gguf: &GgufFile) -> Option<String> {
    let text = |key: &str| gguf.get(key).and_then(|v| v.as_str());
    if let Some(id) = text("general.source.huggingface.repository").and_then(hub_id) {
        return Some(id.to_string());
    }
    ["general.repo_url", "general.source.repo_url"]
        .iter()
        .filter_map(|k| text(k)?.strip_prefix("https://huggingface.co/"))
        .find_map(|rest| {
            let mut parts = rest.trim_end_matches('/').splitn(3, '/');
            let id = format!("{}/{}", parts.next()?, parts.next()?);
            hub_id(&id).map(str::to_string)
        })
}

/// The Hugging Face id of a folder in the hub's cache
/// (`…/models--org--name/snapshots/REVISION`), as transformers and huggingface_hub lay it out.
#[cfg(not(target_arch = "wasm32"))]
fn cached_hub_id(path: &std::path::Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let snapshots = path.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let repo = snapshots.parent()?.file_name()?.to_str()?;
    let (org, name) = repo.strip_prefix("models--")?.split_once("--")?;
    let id = format!("{org}/{name}");
    hub_id(&id).map(str::to_string)
}

impl BaseModel {
    /// From the bytes of a GGUF file.
    pub fn from_gguf(file_name: &str, bytes: Vec<u8>, device: &Device) -> Result<Self> {
        Self::from_gguf_with(file_name, bytes, device, false)
    }

    /// [`Self::from_gguf`]; with `base_f16`, the frozen matrices kept in f16 as they are read.
    pub fn from_gguf_with(
        file_name: &str,
        bytes: Vec<u8>,
        device: &Device,
        base_f16: bool,
    ) -> Result<Self> {
        let gguf = GgufFile::parse(file_name, bytes)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        check_vocab(file_name, &config, &tokenizer)?;
        // A name is printed and written into adapters: no control characters (a terminal's
        // escape sequences), and no more than a name needs.
        let name: String = gguf
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| file_name.trim_end_matches(".gguf"))
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect();
        let gguf_metadata = Some(
            gguf.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        let hub_id = gguf_hub_id(&gguf);
        let ckpt = GgufCheckpoint::new(gguf, config.gguf_map());
        let model = config.load_with(&ckpt, device, base_f16)?;
        Ok(Self {
            name,
            config,
            model,
            tokenizer,
            gguf_metadata,
            hub_id,
        })
    }

    /// From Hugging Face files: `config.json`, `tokenizer.json` (+ optional
    /// `tokenizer_config.json`), and `model.safetensors` or `model.safetensors.index.json` with
    /// its shards. `name` is what to call the model (e.g. the folder name).
    pub fn from_hf_files(name: &str, files: Vec<NamedFile>, device: &Device) -> Result<Self> {
        Self::from_hf_files_with(name, files, device, false)
    }

    /// [`Self::from_hf_files`]; with `base_f16`, the frozen matrices kept in f16 as they are read.
    pub fn from_hf_files_with(
        name: &str,
        files: Vec<NamedFile>,
        device: &Device,
        base_f16: bool,
    ) -> Result<Self> {
        let mut files: Vec<Option<NamedFile>> = files.into_iter().map(Some).collect();
        let mut take = |file: &str| -> Option<NamedFile> {
            files
                .iter_mut()
                .find(|f| f.as_ref().is_some_and(|f| base_name(&f.name) == file))
                .and_then(Option::take)
        };
        let text = |f: NamedFile| -> Result<String> {
            String::from_utf8(f.bytes).map_err(|_| Error::format(&f.name, "is not UTF-8 text"))
        };
        let missing = |what: &str| {
            Error::Invalid(format!(
                "{name}: {what} is missing (a Hugging Face model needs config.json, tokenizer.json \
                 (or GPT-2's vocab.json and merges.txt) and model.safetensors or \
                 model.safetensors.index.json with its shards)"
            ))
        };

        let config_file = take("config.json").ok_or_else(|| missing("config.json"))?;
        let config = ModelConfig::from_json(&config_file.name.clone(), &text(config_file)?)?;
        let tok_config = take("tokenizer_config.json").map(text).transpose()?;
        let tokenizer = match take("tokenizer.json") {
            Some(f) => Tokenizer::from_json(&f.name, &f.bytes, tok_config.as_deref())?,
            // GPT-2's own tokenizer files.
            None => match (take("vocab.json"), take("merges.txt")) {
                (Some(vocab), Some(merges)) => {
                    Tokenizer::from_gpt2_files(&text(vocab)?, &text(merges)?)?
                }
                _ => return Err(missing("tokenizer.json (or vocab.json and merges.txt)")),
            },
        };
        check_vocab("config.json", &config, &tokenizer)?;

        let ckpt = if let Some(index) = take("model.safetensors.index.json") {
            let index_name = index.name.clone();
            let index_text = text(index)?;
            SafetensorsCheckpoint::sharded(&index_name, &index_text, |shard| {
                take(shard)
                    .map(|f| f.bytes)
                    .ok_or_else(|| missing(&format!("the shard {shard} named in {index_name}")))
            })?
        } else if let Some(single) = take("model.safetensors") {
            SafetensorsCheckpoint::single(single.name, single.bytes)?
        } else {
            return Err(missing("model.safetensors"));
        };
        let model = config.load_with(&ckpt, device, base_f16)?;
        Ok(Self {
            name: name.to_string(),
            config,
            model,
            tokenizer,
            gguf_metadata: None,
            hub_id: None,
        })
    }

    /// From a path: a `.gguf` file, or a folder of Hugging Face files.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_path(path: &std::path::Path, device: &Device) -> Result<Self> {
        Self::from_path_with(path, device, false)
    }

    /// [`Self::from_path`]; with `base_f16`, the frozen matrices kept in f16 as they are read.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_path_with(path: &std::path::Path, device: &Device, base_f16: bool) -> Result<Self> {
        let shown = path.display().to_string();
        // Bounded reads of regular files only ([`crate::fs`]): a model's files are at most what
        // its largest allowed weights take ([`crate::limits::MAX_PARAMETERS`] in f32), plus room
        // for a vocabulary.
        let weights_limit = crate::limits::MAX_PARAMETERS * 4 + (1 << 30);
        let text_limit = crate::limits::MAX_TEXT_BYTES as u64;
        if path.is_dir() {
            let read = |name: &str, limit: u64| -> Result<Option<NamedFile>> {
                let p = path.join(name);
                if !p.exists() {
                    return Ok(None);
                }
                let bytes = crate::fs::read_bounded(&p, limit, "a model's file")?;
                Ok(Some(NamedFile::new(name, bytes)))
            };
            // Only the files a model is read from (a folder may hold other models' files).
            let mut files = Vec::new();
            for name in [
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.json",
                "merges.txt",
            ] {
                files.extend(read(name, text_limit)?);
            }
            const INDEX: &str = "model.safetensors.index.json";
            match read(INDEX, text_limit)? {
                Some(index) => {
                    let text = std::str::from_utf8(&index.bytes)
                        .map_err(|_| Error::format(INDEX, "not UTF-8 text"))?;
                    for shard in crate::formats::safetensors::shard_files(INDEX, text)? {
                        files.extend(read(&shard, weights_limit)?);
                    }
                    files.push(index);
                }
                None => files.extend(read("model.safetensors", weights_limit)?),
            }
            let hub_id = cached_hub_id(path);
            let name = hub_id.clone().unwrap_or_else(|| {
                path.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or(shown)
            });
            let mut base = Self::from_hf_files_with(&name, files, device, base_f16)?;
            base.hub_id = hub_id;
            Ok(base)
        } else {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or(shown);
            let bytes = crate::fs::read_bounded(path, weights_limit, "a model file")?;
            Self::from_gguf_with(&file_name, bytes, device, base_f16)
        }
    }

    /// What an adapter's `base_model_name_or_path` says: the Hugging Face id where known
    /// ([`Self::hub_id`]), else the model's name.
    pub fn base_model_id(&self) -> &str {
        self.hub_id.as_deref().unwrap_or(&self.name)
    }

    /// The prompt for one user message in the model's chat format (ChatML if it has none).
    pub fn chat_prompt(&self, user_message: &str) -> Result<String> {
        let [bos, eos] = self.template_tokens();
        crate::chat::render(
            self.chat_template(),
            &[crate::chat::Message::user(user_message)],
            true,
            &bos,
            &eos,
        )
    }

    /// The model's chat template, or [`crate::chat::PLAIN`] when it ships none: what chat
    /// prompts and chat data are rendered with.
    pub fn chat_template(&self) -> &str {
        self.tokenizer
            .chat_template
            .as_deref()
            .unwrap_or(crate::chat::PLAIN)
    }

    /// The BOS and EOS tokens' text, as templates name them (`bos_token`, `eos_token`).
    pub fn template_tokens(&self) -> [String; 2] {
        let token = |id: Option<u32>| {
            id.and_then(|id| self.tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        [
            token(self.tokenizer.bos_token_id),
            token(self.tokenizer.eos_token_ids.first().copied()),
        ]
    }

    /// Token ids that end generation: the config's and the tokenizer's EOS.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut ids = self.tokenizer.eos_token_ids.clone();
        ids.extend(self.config.eos_token_ids());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// Token ids beyond the embedding would index out of bounds (a panic on the CPU, garbage on a
/// GPU): refuse a tokenizer with any id, or a special token, the model's vocabulary lacks.
fn check_vocab(file: &str, config: &ModelConfig, tokenizer: &Tokenizer) -> Result<()> {
    let vocab = config.vocab_size();
    if tokenizer.vocab_size() > vocab {
        return Err(Error::config(
            file,
            format!(
                "the tokenizer has {} tokens but the model's vocabulary has {vocab}",
                tokenizer.vocab_size()
            ),
        ));
    }
    if let Some(max) = tokenizer.max_id()
        && max as usize >= vocab
    {
        return Err(Error::config(
            file,
            format!(
                "the tokenizer has token id {max}, outside the model's vocabulary ({vocab} tokens)"
            ),
        ));
    }
    let special = tokenizer
        .eos_token_ids
        .iter()
        .chain(&tokenizer.bos_token_id);
    if let Some(id) = special.into_iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::config(
            file,
            format!(
                "the tokenizer's BOS/EOS token id {id} is outside the model's vocabulary ({vocab} tokens)"
            ),
        ));
    }
    Ok(())
}
