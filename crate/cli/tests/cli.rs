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

// `train --out` is checked before training; the adapter is written whole or not at all.
#[test]
fn train_out_is_checked_before_training() {
    let dir = std::env::temp_dir().join(format!("webtune-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("fox.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(100),
    )
    .unwrap();
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
    let dir = std::env::temp_dir().join(format!("webtune-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("fox.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(100),
    )
    .unwrap();
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
    let dir = std::env::temp_dir().join(format!("webtune-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("fox.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(100),
    )
    .unwrap();
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
