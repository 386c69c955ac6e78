//! How `train` reports its run: a progress bar on a terminal (indicatif: rate, ETA), one plain
//! line a step where stderr is not one (a log file), JSON lines on stdout for scripts
//! (`--json`: each `Progress` whole), or nothing but errors (`--quiet`).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use webtune::train::Progress;

pub enum Report {
    Bar(ProgressBar),
    Lines,
    Json,
    Quiet,
}

impl Report {
    pub fn new(quiet: bool, json: bool, total_steps: usize) -> Self {
        if quiet {
            Self::Quiet
        } else if json {
            Self::Json
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "[{bar:30}] {pos}/{len} {msg} | {per_sec} | ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("#>."),
            );
            Self::Bar(bar)
        } else {
            Self::Lines
        }
    }

    /// A message for the person (on stderr; above the bar when there is one).
    pub fn note(&self, text: &str) {
        match self {
            Self::Bar(bar) => bar.println(text),
            Self::Lines | Self::Json => eprintln!("{text}"),
            Self::Quiet => {}
        }
    }

    /// A report of the trainer's: step 0 (the base's validation loss) or a step taken.
    pub fn progress(&self, p: &Progress) {
        let loss = p
            .train_loss
            .map_or(String::new(), |l| format!("loss {l:.3}"));
        let val = p.val_loss.map_or(String::new(), |l| {
            format!(" val {l:.3} (perplexity {:.2})", l.exp())
        });
        match self {
            Self::Json => println!(
                "{}",
                serde_json::to_string(p).expect("a progress report serializes")
            ),
            Self::Quiet => {}
            _ if p.step == 0 => self.note(&format!("before training:{val}")),
            Self::Bar(bar) => {
                bar.set_position(p.step as u64);
                bar.set_message(format!("{loss}{val}"));
                if p.val_loss.is_some() {
                    bar.println(format!("step {}: {loss}{val}", p.step));
                }
            }
            Self::Lines => eprintln!(
                "step {}/{}: {loss}{val} | {:.0} tok/s | ETA {}",
                p.step,
                p.total_steps,
                p.tokens_per_sec,
                duration(p.eta_secs)
            ),
        }
    }

    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
