//! `--model org/name`: a model by its Hugging Face id (`org/name/file.gguf` for one GGUF file of a
//! repository, `@revision` for a branch, tag or commit). The files webtune reads are fetched
//! from the hub's `resolve` URLs at the revision's commit, checked against the sizes and hashes
//! the hub lists, and kept in the hub's own cache layout
//! (`$HF_HUB_CACHE` or `$HF_HOME/hub`, default `~/.cache/huggingface/hub`:
//! `models--org--name/snapshots/COMMIT/`), where transformers' downloads are found too.
//! `HF_ENDPOINT` names a mirror (the tests' local server); `HF_HUB_OFFLINE=1` reads the cache
//! only. The page does the same with the browser's fetch (web/hub.js).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha1::Digest as _;
use webtune::Error;

/// A model named by id.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub id: String,
    /// One GGUF file of the repository.
    pub file: Option<String>,
    pub revision: String,
}

/// What `text` names, if it is a model id rather than a path: `org/name`, optionally a
/// `.gguf` file in it and an `@revision`. A path that exists is never an id.
pub fn parse(text: &str) -> Option<ModelRef> {
    if Path::new(text).exists() {
        return None;
    }
    let (path, revision) = match text.split_once('@') {
        Some((p, r)) if !r.is_empty() && r.chars().all(revision_char) => (p, r),
        Some(_) => return None,
        None => (text, "main"),
    };
    let mut parts = path.splitn(3, '/');
    let id = format!("{}/{}", parts.next()?, parts.next()?);
    webtune::base_model::hub_id(&id)?;
    let file = parts.next().map(str::to_string);
    if let Some(f) = &file
        && (!f.to_ascii_lowercase().ends_with(".gguf")
            || f.split('/').any(|p| p.is_empty() || p.starts_with('.')))
    {
        return None;
    }
    Some(ModelRef {
        id,
        file,
        revision: revision.to_string(),
    })
}

fn revision_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

/// The files a Hugging Face model folder is read from (`webtune::BaseModel::from_path`).
const TEXT_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
];
const INDEX: &str = "model.safetensors.index.json";

#[derive(Deserialize)]
struct Listing {
    sha: String,
    siblings: Vec<Sibling>,
    #[serde(default, rename = "cardData")]
    card_data: Option<serde_json::Value>,
}

#[derive(Deserialize, Clone)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize, Clone)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Sibling {
    fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }
}

/// A model fetched (or found in the cache): the snapshot folder, or the GGUF file in it; and
/// for a GGUF, the base model its repository's card names (what adapters name as their base).
pub struct Fetched {
    pub path: PathBuf,
    pub base_id: Option<String>,
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/huggingface")
        });
    home.join("hub")
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// Fetches what `model` names into the cache (only the files not there already), with a line of
/// progress a file on stderr.
pub fn fetch(model: &ModelRef) -> webtune::Result<Fetched> {
    let repo = cache_root().join(format!("models--{}", model.id.replace('/', "--")));
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    if offline {
        return cached(model, &repo);
    }
    let id = &model.id;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!(
        "{}/api/models/{id}/revision/{}?blobs=true",
        endpoint(),
        model.revision
    );
    let mut response = match agent.get(&url).call() {
        Ok(r) => r,
        // Offline: what the cache holds, if it holds this revision.
        Err(e) => {
            return cached(model, &repo)
                .map_err(|_| Error::Invalid(format!("{id}: the hub could not be reached ({e})")));
        }
    };
    let status = response.status().as_u16();
    if matches!(status, 401 | 403 | 404) {
        return Err(Error::Invalid(format!(
            "{id}: the hub has no such model, or it is private or gated (answered {status}; \
             webtune sends no token: download the files and pass their folder)"
        )));
    }
    if status != 200 {
        return Err(Error::Invalid(format!("{id}: the hub answered {status}")));
    }
    let listing: Listing = response
        .body_mut()
        .read_json()
        .map_err(|e| Error::Invalid(format!("{id}: the hub's file list is not readable ({e})")))?;
    let commit = listing.sha.clone();
    if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{id}: the hub's answer names no commit"
        )));
    }
    let find = |name: &str| listing.siblings.iter().find(|s| s.rfilename == name);
    let wanted: Vec<String> = match &model.file {
        Some(file) => {
            find(file).ok_or_else(|| {
                Error::Invalid(format!("{id}: the repository has no file {file}"))
            })?;
            vec![file.clone()]
        }
        None => {
            if find("config.json").is_none() {
                let ggufs: Vec<&str> = listing
                    .siblings
                    .iter()
                    .map(|s| s.rfilename.as_str())
                    .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
                    .collect();
                return Err(Error::Invalid(match ggufs.first() {
                    Some(first) => format!(
                        "{id} holds GGUF files: name one, e.g. {id}/{}",
                        ggufs
                            .iter()
                            .find(|f| f.to_ascii_lowercase().contains("q4_k_m"))
                            .unwrap_or(first)
                    ),
                    None => format!("{id} has no config.json: not a model webtune reads"),
                }));
            }
            let mut wanted: Vec<String> = TEXT_FILES
                .iter()
                .filter(|f| find(f).is_some())
                .map(|f| f.to_string())
                .collect();
            if find(INDEX).is_some() {
                wanted.push(INDEX.into());
            } else if find("model.safetensors").is_some() {
                wanted.push("model.safetensors".into());
            } else {
                return Err(Error::Invalid(format!(
                    "{id} has no safetensors weights (model.safetensors or {INDEX}), which \
                     webtune reads"
                )));
            }
            wanted
        }
    };
    let snapshot = repo.join("snapshots").join(&commit);
    let get = |file: &str| -> webtune::Result<PathBuf> {
        let sibling = find(file).expect("a listed file");
        download(&agent, model, &commit, sibling, &snapshot)
    };
    for file in &wanted {
        let path = get(file)?;
        if file == INDEX {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(file, e))?;
            for shard in webtune::formats::safetensors::shard_files(INDEX, &text)? {
                if find(&shard).is_none() {
                    return Err(Error::Invalid(format!(
                        "{id}: {INDEX} names {shard}, which the repository does not hold"
                    )));
                }
                get(&shard)?;
            }
        }
    }
    // The revision's commit, for the cache (offline runs) and for huggingface_hub.
    if model.revision != commit {
        let refs = repo.join("refs");
        std::fs::create_dir_all(&refs).map_err(|e| Error::io(refs.display().to_string(), e))?;
        let r = refs.join(&model.revision);
        if let Some(parent) = r.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(&r, &commit).map_err(|e| Error::io(r.display().to_string(), e))?;
    }
    let base_id = model.file.as_ref().and_then(|_| {
        let base = listing.card_data.as_ref()?.get("base_model")?;
        let base = base.as_str().or_else(|| base.get(0)?.as_str())?;
        webtune::base_model::hub_id(base).map(str::to_string)
    });
    Ok(Fetched {
        path: match &model.file {
            Some(f) => snapshot.join(f),
            None => snapshot,
        },
        base_id,
    })
}

/// The revision as the cache holds it (`refs/REVISION` names its commit; a commit names
/// itself).
fn cached(model: &ModelRef, repo: &Path) -> webtune::Result<Fetched> {
    let commit = std::fs::read_to_string(repo.join("refs").join(&model.revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| model.revision.clone());
    let snapshot = repo.join("snapshots").join(&commit);
    let path = match &model.file {
        Some(f) => snapshot.join(f),
        None => snapshot,
    };
    if !path.exists() {
        return Err(Error::Invalid(format!(
            "{}@{}: not in the cache ({}), and the hub is not asked (HF_HUB_OFFLINE)",
            model.id,
            model.revision,
            repo.display()
        )));
    }
    Ok(Fetched {
        path,
        base_id: None,
    })
}

/// `sibling` into `snapshot`, unless it is there with its listed size: written to a temporary
/// file as it arrives (hashing it), checked against the listed size and hash, then renamed.
fn download(
    agent: &ureq::Agent,
    model: &ModelRef,
    commit: &str,
    sibling: &Sibling,
    snapshot: &Path,
) -> webtune::Result<PathBuf> {
    let file = &sibling.rfilename;
    let what = format!("{}: {file}", model.id);
    let target = snapshot.join(file);
    if let (Ok(meta), Some(size)) = (std::fs::metadata(&target), sibling.size())
        && meta.is_file()
        && meta.len() == size
    {
        return Ok(target);
    }
    let dir = target.parent().unwrap_or(snapshot);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    let url = format!("{}/{}/resolve/{commit}/{file}", endpoint(), model.id);
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|e| Error::Invalid(format!("{what}: the download failed ({e})")))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(Error::Invalid(format!("{what}: the hub answered {status}")));
    }
    let partial = target.with_extension("incomplete");
    let shown = partial.display().to_string();
    let mut out = std::fs::File::create(&partial).map_err(|e| Error::io(&shown, e))?;
    let (mut sha256, mut sha1) = (sha2::Sha256::new(), sha1::Sha1::new());
    let lfs = sibling.lfs.is_some();
    if !lfs {
        // git's blob id: SHA-1 of a header, then the bytes.
        sha1.update(format!("blob {}\0", sibling.size.unwrap_or(0)).as_bytes());
    }
    let (mut reader, mut buf) = (response.body_mut().as_reader(), vec![0u8; 1 << 20]);
    let (mut got, mut shown_mb) = (0u64, 0u64);
    let total = sibling.size();
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::Invalid(format!("{what}: the download failed ({e})")))?;
        if n == 0 {
            break;
        }
        got += n as u64;
        if total.is_some_and(|t| got > t) {
            break; // more than listed: refused below, without reading the rest
        }
        if lfs {
            sha256.update(&buf[..n]);
        } else {
            sha1.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(|e| Error::io(&shown, e))?;
        if got >> 26 > shown_mb {
            shown_mb = got >> 26;
            eprintln!(
                "{what}: {} MB{}",
                got >> 20,
                total.map_or(String::new(), |t| format!(" of {}", t >> 20))
            );
        }
    }
    drop(out);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let problem = if total.is_some_and(|t| t != got) {
        Some(format!(
            "got {got} bytes, the hub lists {}",
            total.unwrap_or(0)
        ))
    } else if let Some(l) = &sibling.lfs {
        (hex(&sha256.finalize()) != l.sha256)
            .then(|| "its SHA-256 is not the one the hub lists".into())
    } else if let Some(b) = &sibling.blob_id {
        (hex(&sha1.finalize()) != *b).then(|| "its git hash is not the one the hub lists".into())
    } else {
        None
    };
    if let Some(problem) = problem {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Invalid(format!("{what}: {problem}")));
    }
    std::fs::rename(&partial, &target).map_err(|e| Error::io(target.display().to_string(), e))?;
    eprintln!("{what}: {} bytes, checked", got);
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_told_from_paths() {
        let r = |id: &str, file: Option<&str>, rev: &str| ModelRef {
            id: id.into(),
            file: file.map(str::to_string),
            revision: rev.into(),
        };
        assert_eq!(parse("org/name"), Some(r("org/name", None, "main")));
        assert_eq!(
            parse("org/name-GGUF/m.Q4_K_M.gguf@v1.0"),
            Some(r("org/name-GGUF", Some("m.Q4_K_M.gguf"), "v1.0"))
        );
        for not in [
            "name",
            "org/name/config.json",
            "../x/y",
            "org/name@",
            "org/name@a b",
            "/abs/path",
            "org/.hidden",
            "org/name/../x.gguf",
        ] {
            assert_eq!(parse(not), None, "{not}");
        }
        // A path that exists is a path, even if it reads as an id (tests run in the crate's
        // folder).
        assert!(Path::new("src/hub.rs").exists());
        assert_eq!(parse("src/hub.rs"), None);
    }
}
