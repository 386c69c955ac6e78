//! The defaults a person starts from besides a run's own ([`RunSpec::default`]): the CLI's
//! flags and the page's form both read them (the page through `WebSession.defaults()`).

use serde::Serialize;

use crate::spec::RunSpec;

/// Tokens the before/after sample adds to its prompt.
pub const SAMPLE_TOKENS: usize = 40;
/// Steps between two reads of the training loss on a GPU ([`crate::spec::ExecSpec::log_every`]):
/// each read waits until the GPU has run everything queued, so that the next step's commands
/// are only recorded once it has gone idle. Half the default checkpoint period, where the loss
/// is read anyway: the chart still gets a point every few seconds.
pub const GPU_LOG_EVERY: usize = 5;

/// All defaults, as the page asks for them.
#[derive(Debug, Clone, Serialize)]
pub struct Defaults {
    pub spec: RunSpec,
    pub sample_tokens: usize,
    pub presets: Vec<Preset>,
}

pub fn defaults() -> Defaults {
    Defaults {
        spec: RunSpec::default(),
        sample_tokens: SAMPLE_TOKENS,
        presets: presets(),
    }
}

/// A named starting point for a person who does not know what a rank is: a whole run spec, and
/// the precision its adapter downloads in. The page offers them above its form; the CLI takes
/// `train --preset NAME`. Their held-out losses on the same text: README, "Presets".
#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    pub name: &'static str,
    /// What the page shows.
    pub label: &'static str,
    pub description: &'static str,
    pub spec: RunSpec,
    /// Whether its adapter is exported in f16 (half the size).
    pub export_f16: bool,
}

/// The presets, the first the defaults.
pub fn presets() -> Vec<Preset> {
    let mut tiny = RunSpec::default();
    // Rank 1 on q_proj and v_proj, in f16: ~130 kB for SmolLM2-135M, an adapter small enough
    // to share anywhere. Alpha keeps the defaults' alpha / r = 2; a rank-1 update takes a
    // larger step size.
    tiny.lora.r = 1;
    tiny.lora.alpha = 2.0;
    tiny.optim.lr = 1e-3;
    let mut thorough = RunSpec::default();
    // Every linear layer (PEFT's "all-linear"), rank 16 and three times the steps: what most
    // fine-tuning recipes use when quality matters more than minutes.
    thorough.lora.targets = vec!["all-linear".into()];
    thorough.lora.r = 16;
    thorough.lora.alpha = 32.0;
    thorough.optim.lr = 2e-4;
    thorough.train.steps = 300;
    vec![
        Preset {
            name: "quick",
            label: "Quick",
            description: "The defaults: rank 8 on the attention's query and value, 100 steps.",
            spec: RunSpec::default(),
            export_f16: false,
        },
        Preset {
            name: "tiny",
            label: "Tiny adapter",
            description: "Rank 1, saved in 16-bit: about 130 kB for SmolLM2-135M, at some cost in \
                          what it learns.",
            spec: tiny,
            export_f16: true,
        },
        Preset {
            name: "thorough",
            label: "Thorough",
            description: "Every linear layer at rank 16, 300 steps: learns the most, takes about \
                          three times as long.",
            spec: thorough,
            export_f16: false,
        },
    ]
}

/// The preset named `name`, or an error listing them.
pub fn preset(name: &str) -> crate::Result<Preset> {
    presets()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            let names: Vec<_> = presets().iter().map(|p| p.name).collect();
            crate::Error::Invalid(format!(
                "no preset `{name}` (presets: {})",
                names.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each preset is a spec the core accepts; the first is the defaults; names are unique.
    #[test]
    fn presets_are_valid_specs() {
        let all = presets();
        assert_eq!(all[0].spec, RunSpec::default());
        for p in &all {
            p.spec.validate().unwrap();
            assert_eq!(preset(p.name).unwrap().spec, p.spec);
        }
        let mut names: Vec<_> = all.iter().map(|p| p.name).collect();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(preset("fast").is_err());
    }
}
