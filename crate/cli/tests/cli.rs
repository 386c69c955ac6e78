//! The command line end to end: `webtune train` checks `--out` before training, writes the adapter
//! whole or not at all, and a run paused (or killed) after a checkpoint resumes exactly.

use std::path::PathBuf;

use webtune::checkpoint;
use webtune::formats::gguf::{GgufFile, Value};
use webtune::formats::peft;

/// `tests/fixtures` at the repository root.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A fresh temporary folder for one test (`webtune-NAME-PID`, emptied first) holding `fox.txt`,
/// one sentence `repeats` times.
fn fox_text(name: &str, repeats: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("webtune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("fox.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(repeats),
    )
    .unwrap();
    (dir, text)
}

// `train --out` is checked before training; the adapter is written whole or not at all.
#[test]
fn train_out_is_checked_before_training() {
    let (dir, text) = fox_text("hostile", 100);
    let model = fixtures().join("tiny-llama-q.gguf");
    let train = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--seq-len",
            "16",
        ];
        args.extend(extra);
        cli(&args)
    };

    let adapter = dir.join("adapter");
    let (ok, err) = train(&adapter, &[]);
    assert!(ok, "{err}");
    let written: Vec<String> = std::fs::read_dir(&adapter)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let mut sorted = written.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [peft::CONFIG_FILE, peft::WEIGHTS_FILE, "webtune-run.json"],
        "{written:?}"
    );

    let (ok, err) = train(&adapter, &[]);
    assert!(
        !ok && err.contains("already holds an adapter") && err.contains("--force"),
        "{err}"
    );
    let (ok, err) = train(&adapter, &["--force", "--gguf"]);
    assert!(ok, "{err}");
    // --gguf adds the llama.cpp adapter (its format: crate/tests/gguf_lora.rs).
    let gguf = GgufFile::parse(
        "adapter.gguf",
        std::fs::read(adapter.join("adapter.gguf")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        gguf.get("general.type"),
        Some(&Value::String("adapter".into()))
    );

    let (ok, err) = train(&text, &[]);
    assert!(!ok && err.contains("must be a folder"), "{err}");
    let (ok, err) = train(&text.join("sub"), &[]);
    assert!(!ok && err.contains("fox.txt"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// The run's settings are one spec: `--config` reads it (an unknown key is an error naming it),
// typed flags change their one setting, and the spec the run trained with is written whole
// beside the adapter, where `--config` takes it back to train the same adapter again.
#[test]
fn train_reads_a_run_spec_and_writes_the_one_it_ran() {
    let (dir, text) = fox_text("spec", 100);
    let model = fixtures().join("tiny-llama-q.gguf");
    let train = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        cli(&args)
    };
    let config = dir.join("run.json");
    std::fs::write(&config, r#"{"train": {"stpes": 2}}"#).unwrap();
    let (ok, err) = train(&dir.join("a"), &["--config", config.to_str().unwrap()]);
    assert!(
        !ok && err.contains("run.json") && err.contains("stpes"),
        "{err}"
    );

    std::fs::write(
        &config,
        r#"{"data": {"seq_len": 16}, "train": {"steps": 2, "seed": 5}, "lora": {"r": 4}}"#,
    )
    .unwrap();
    let first = dir.join("first");
    let (ok, err) = train(
        &first,
        &["--config", config.to_str().unwrap(), "--rank", "2"],
    );
    assert!(ok, "{err}");
    let ran: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("webtune-run.json")).unwrap()).unwrap();
    assert_eq!(ran["train"]["steps"], 2);
    assert_eq!(ran["train"]["seed"], 5);
    assert_eq!(ran["data"]["seq_len"], 16);
    assert_eq!(ran["lora"]["r"], 2, "the typed flag wins over the file");
    assert_eq!(ran["optim"]["lr"], 5e-4, "written whole, defaults included");

    let again = dir.join("again");
    let spec = first.join("webtune-run.json");
    let (ok, err) = train(&again, &["--config", spec.to_str().unwrap()]);
    assert!(ok, "{err}");
    let weights = |d: &std::path::Path| std::fs::read(d.join(peft::WEIGHTS_FILE)).unwrap();
    assert!(
        weights(&first) == weights(&again),
        "the same spec trained another adapter"
    );

    // A preset is a whole spec to start from, flags typed changing their one setting; the tiny
    // one's adapter is stored in f16.
    let tiny = dir.join("tiny");
    let (ok, err) = train(
        &tiny,
        &["--preset", "tiny", "--steps", "2", "--seq-len", "16"],
    );
    assert!(ok, "{err}");
    let ran: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny.join("webtune-run.json")).unwrap()).unwrap();
    assert_eq!(ran["lora"]["r"], 1);
    assert_eq!(ran["lora"]["alpha"], 2.0);
    assert_eq!(ran["optim"]["lr"], 1e-3);
    assert_eq!(ran["train"]["steps"], 2);
    let header = weights(&tiny);
    let header_len = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&header[8..8 + header_len]).unwrap();
    assert!(
        header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .all(|(_, t)| t["dtype"] == "F16"),
        "{header}"
    );
    let (ok, err) = train(&dir.join("none"), &["--preset", "fast"]);
    assert!(
        !ok && err.contains("fast") && err.contains("quick, tiny, thorough"),
        "{err}"
    );

    // Chat data is read as the page reads it: records rendered with the chat template, a
    // malformed line reported with its number and left out.
    let chats = dir.join("chats.jsonl");
    let record = r#"{"messages": [{"role": "user", "content": "Where is the cat?"}, {"role": "assistant", "content": "On the mat."}]}"#;
    let mut lines = vec![record; 12];
    lines.insert(3, "{not json");
    std::fs::write(&chats, lines.join("\n")).unwrap();
    let out = dir.join("chat");
    let (ok, err) = cli(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        chats.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--seq-len",
        "48",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("chats.jsonl, line 4") && err.contains("12 examples"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// Durable runs on the command line: a run paused (or killed) after a checkpoint and
// resumed with --resume writes the adapter an uninterrupted run writes, byte for byte.
#[test]
fn train_resume_continues_exactly() {
    let (dir, text) = fox_text("resume", 100);
    let model = fixtures().join("tiny-llama-q.gguf");
    let train = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        cli(&args)
    };
    let settings = [
        "--steps",
        "8",
        "--seq-len",
        "16",
        "--seed",
        "3",
        "--eval-every",
        "3",
    ];
    let whole = dir.join("whole");
    let (ok, err) = train(&whole, &settings);
    assert!(ok, "{err}");
    assert!(
        !whole.join(checkpoint::FILE_NAME).exists(),
        "a finished run keeps no checkpoint"
    );

    let parts = dir.join("parts");
    let mut first: Vec<&str> = settings.to_vec();
    first.extend(["--pause-after", "5"]);
    let (ok, err) = train(&parts, &first);
    assert!(ok && err.contains("paused after step 5"), "{err}");
    assert!(!parts.join(peft::WEIGHTS_FILE).exists());
    let resume = ["--resume", parts.to_str().unwrap()];
    // Settings come from the checkpoint: typing one is refused, not ignored.
    let (ok, err) = train(&parts, &[&resume[..], &["--rank", "4"]].concat());
    assert!(!ok && err.contains("--rank"), "{err}");
    let (ok, err) = train(&parts, &resume);
    assert!(ok && err.contains("step 5 of 8"), "{err}");
    for file in [peft::WEIGHTS_FILE, peft::CONFIG_FILE] {
        assert!(
            std::fs::read(whole.join(file)).unwrap() == std::fs::read(parts.join(file)).unwrap(),
            "{file} of the resumed run differs"
        );
    }
    // merge: base + adapter as one Hugging Face folder and one GGUF, which load and generate
    // (their logits: crate/tests/merged.rs).
    let merged = dir.join("merged");
    let gguf = dir.join("merged.gguf");
    let (ok, err) = cli(&[
        "merge",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        whole.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--gguf",
        gguf.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for m in [&merged, &gguf] {
        let (ok, err) = cli(&[
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            "the",
            "--max-new-tokens",
            "4",
        ]);
        assert!(ok, "{err}");
    }
    // --adapter continues an adapter with its own LoRA settings: a typed rank is refused.
    let (ok, err) = train(
        &dir.join("more"),
        &["--adapter", whole.to_str().unwrap(), "--rank", "4"],
    );
    assert!(!ok && err.contains("--rank"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// The commands README.md shows, run as written on the tiny model and small texts in place of
// its placeholders: each must succeed, in the order shown (train writes the adapter that eval and
// merge read).
#[test]
fn readme_commands_run() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let prefix = "cargo run --release -p webtune-cli -- ";
    let commands: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(prefix))
        .collect();
    assert!(commands.len() >= 5, "README.md shows the command line");
    let dir = std::env::temp_dir().join(format!("webtune-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["a.txt", "b.txt", "held-out.txt"] {
        std::fs::write(
            dir.join(name),
            format!("{name}: the quick brown fox jumps over the lazy dog. ").repeat(80),
        )
        .unwrap();
    }
    let model = fixtures().join("tiny-llama-q.gguf");
    for command in commands {
        let args: Vec<String> = split_words(command)
            .into_iter()
            .map(|w| match w.as_str() {
                "M.gguf" | "path/to/hf-folder-or-file.gguf" => model.display().to_string(),
                "a.txt" | "b.txt" | "held-out.txt" | "adapter/" | "merged/" | "merged.gguf" => {
                    dir.join(&w).display().to_string()
                }
                _ => w,
            })
            .collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webtune"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`webtune {command}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(dir.join("adapter/adapter_model.safetensors").exists());
    assert!(dir.join("merged/model.safetensors").exists());
    assert!(dir.join("merged.gguf").exists());

    // merge's --gguf: never the model it reads, even with --force; an existing file only with it.
    let model_copy = dir.join("model.gguf");
    std::fs::copy(&model, &model_copy).unwrap();
    let merge = |gguf: &std::path::Path, force: bool| {
        let (m, a, o) = (
            model_copy.to_str().unwrap(),
            dir.join("adapter"),
            dir.join("m2"),
        );
        let mut args = vec!["merge", "--model", m, "--adapter", a.to_str().unwrap()];
        let o = o.to_str().unwrap().to_string();
        let g = gguf.to_str().unwrap().to_string();
        args.extend(["--out", &o, "--gguf", &g]);
        if force {
            args.push("--force");
        }
        cli(&args)
    };
    let (ok, err) = merge(&model_copy, true);
    assert!(!ok && err.contains("that is the model"), "{err}");
    assert_eq!(
        std::fs::read(&model_copy).unwrap(),
        std::fs::read(&model).unwrap()
    );
    let (ok, err) = merge(&dir.join("merged.gguf"), false);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, err) = merge(&dir.join("merged.gguf"), true);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A command line's words, as a shell splits them (double quotes only: what README.md uses).
fn split_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => (quoted, any) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// A local server with the Hugging Face hub's URL layout, serving the tiny GPT-2 folder as
/// `webtune-test/tiny-gpt2` and as `webtune-test/wrong-size` (whose listing gives the weights
/// a size they do not have), and counting the requests it answers.
fn hub_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use sha1::Digest as _;
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let files: Vec<(String, Vec<u8>)> = [
        "config.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read(fixtures().join("tiny-gpt2").join(f)).unwrap(),
        )
    })
    .collect();
    let listing = |wrong: bool| {
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, bytes)| {
                if name.ends_with(".safetensors") {
                    let size = bytes.len() + usize::from(wrong);
                    let sha: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
                    serde_json::json!({"rfilename": name, "size": size, "lfs": {"sha256": sha, "size": size}})
                } else {
                    let mut h = sha1::Sha1::new();
                    h.update(format!("blob {}\0", bytes.len()).as_bytes());
                    h.update(bytes);
                    let id: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                    serde_json::json!({"rfilename": name, "size": bytes.len(), "blobId": id})
                }
            })
            .collect();
        serde_json::json!({"sha": commit, "siblings": siblings}).to_string()
    };
    let (good, wrong) = (listing(false), listing(true));
    let base = origin.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() <= 2 {
                    break;
                }
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let respond = |stream: &mut std::net::TcpStream,
                           status: &str,
                           headers: &str,
                           body: &[u8]| {
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            };
            let repo = ["webtune-test/tiny-gpt2", "webtune-test/wrong-size"]
                .into_iter()
                .find(|r| path.contains(&format!("/{r}/")));
            match repo {
                Some(r) if path.starts_with("/api/models/") => {
                    let body = if r.ends_with("wrong-size") {
                        &wrong
                    } else {
                        &good
                    };
                    respond(
                        &mut stream,
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        body.as_bytes(),
                    );
                }
                Some(r) if path.starts_with(&format!("/{r}/resolve/{commit}/")) => {
                    // The hub redirects a file to its storage.
                    let file = path.rsplit('/').next().unwrap();
                    let to = format!("Location: {base}/storage/{file}\r\n");
                    respond(&mut stream, "302 Found", &to, b"");
                }
                _ => match files.iter().find(|(n, _)| path == format!("/storage/{n}")) {
                    Some((_, bytes)) => respond(&mut stream, "200 OK", "", bytes),
                    None => respond(&mut stream, "404 Not Found", "", b"Repository not found"),
                },
            }
        }
    });
    (origin, count)
}

// `--model org/name`: fetched from the hub's URLs (here a local server with its layout) into the
// hub's cache layout, checked, and read from the cache afterwards, also offline; a model the hub
// does not have, and a file that is not the size listed, are errors naming them.
#[test]
fn a_model_id_is_fetched_from_the_hub_into_its_cache() {
    let (origin, requests) = hub_server();
    let cache = std::env::temp_dir().join(format!("webtune-hf-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let run = |args: &[&str], offline: bool| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webtune"))
            .args(args)
            .env("HF_ENDPOINT", &origin)
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, out) = run(&["info", "--model", "webtune-test/tiny-gpt2"], false);
    assert!(ok, "{out}");
    assert!(out.contains("name: webtune-test/tiny-gpt2"), "{out}");
    let snapshot = cache
        .join("models--webtune-test--tiny-gpt2/snapshots/0123456789abcdef0123456789abcdef01234567");
    for f in [
        "config.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(snapshot.join(f)).unwrap(),
            std::fs::read(fixtures().join("tiny-gpt2").join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(cache.join("models--webtune-test--tiny-gpt2/refs/main")).unwrap(),
        "0123456789abcdef0123456789abcdef01234567"
    );
    // Offline: from the cache, asking nothing.
    let asked = requests.load(std::sync::atomic::Ordering::SeqCst);
    let (ok, out) = run(&["info", "--model", "webtune-test/tiny-gpt2"], true);
    assert!(ok, "{out}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), asked);

    let (ok, out) = run(&["info", "--model", "webtune-test/no-such-model"], false);
    assert!(
        !ok && out.contains("webtune-test/no-such-model: the hub has no such model"),
        "{out}"
    );
    let (ok, out) = run(&["info", "--model", "webtune-test/wrong-size"], false);
    assert!(
        !ok && out.contains("webtune-test/wrong-size: model.safetensors: got"),
        "{out}"
    );
    assert!(
        !cache.join("models--webtune-test--wrong-size/snapshots/0123456789abcdef0123456789abcdef01234567/model.safetensors").exists(),
        "a file that failed its check is not kept"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

// `train --recipe`: the run taken further with PyTorch + transformers + PEFT. The windows it
// writes are the ones trained on; where python3 has torch, transformers, peft and accelerate
// (not needed by CI), the script loads the base and the adapter and gets the validation loss
// webtune got, then trains on.
#[test]
fn the_recipe_continues_the_run_in_pytorch() {
    let (dir, text) = fox_text("recipe", 60);
    let model = fixtures().join("tiny-gpt2");
    let out = dir.join("out");
    let args = [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--seq-len",
        "16",
        "--eval-windows",
        "0",
        "--recipe",
        "--json",
    ];
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).lines().last().unwrap()).unwrap();
    let webtune_val = last["val_loss"].as_f64().unwrap();

    let recipe = out.join("recipe");
    for f in [
        "train_peft.py",
        "run.json",
        "train.jsonl",
        "val.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(recipe.join(f).exists(), "{f}");
    }
    assert_eq!(
        std::fs::read(recipe.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    );
    let val: Vec<serde_json::Value> = std::fs::read_to_string(recipe.join("val.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!val.is_empty());
    for w in &val {
        assert_eq!(w["input_ids"].as_array().unwrap().len(), 17);
        assert_eq!(w["labels"][0], -100);
        assert_eq!(w["labels"][1], w["input_ids"][1]);
    }

    let torch = std::process::Command::new("python3")
        .args(["-c", "import torch, transformers, peft, accelerate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !torch {
        eprintln!(
            "the recipe's script was not run: python3 cannot import torch, transformers, peft and accelerate"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        return;
    }
    let script = recipe.join("train_peft.py");
    let python = |extra: &[&str]| {
        let o = std::process::Command::new("python3")
            .arg(&script)
            .args(["--base", model.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let eval: serde_json::Value = serde_json::from_str(python(&["--eval-only"]).trim()).unwrap();
    let theirs = eval["val_loss"].as_f64().unwrap();
    assert!(
        (theirs - webtune_val).abs() < 1e-3,
        "PEFT's validation loss {theirs} against webtune's {webtune_val}"
    );
    let trained = dir.join("further");
    let log = python(&["--steps", "2", "--out", trained.to_str().unwrap()]);
    assert!(log.contains("\"step\": 2"), "{log}");
    assert!(trained.join("adapter_model.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
