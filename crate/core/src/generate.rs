//! Text generation with the KV cache: greedy or sampled (temperature, top-k, top-p, seed).
//!
//! The loop is `async` because in a browser every GPU readback is; natively
//! [`generate_blocking`] drives the same loop.

use crate::rng::Rng;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::CausalLM;

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches top_p (1.0 = off).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Checks the settings (a NaN temperature or a million new tokens get a message).
    pub fn validate(&self) -> Result<()> {
        let max = crate::limits::MAX_NEW_TOKENS;
        if self.max_new_tokens > max {
            return Err(Error::Invalid(format!(
                "max_new_tokens is {}; at most {max} tokens are generated at once",
                self.max_new_tokens
            )));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Invalid(format!(
                "the temperature is {}; it must be 0 (greedy) or positive",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!(
                "top_p is {}; it must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }

    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }
}

/// Picks the next token from one position's logits.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 { (i, x) } else { best }
            })
            .0 as u32
    };
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    let mut cands: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .map(|(i, &x)| (i as u32, x))
        .collect();
    if cands.is_empty() {
        return argmax();
    }
    cands.sort_by(|a, b| b.1.total_cmp(&a.1));
    if cfg.top_k > 0 {
        cands.truncate(cfg.top_k);
    }
    // exp((x - max) / T) in f64: the largest is 1 and the rest in [0, 1] for any temperature
    // (x / T itself overflows for a tiny T: 1e-39 made every logit infinite).
    let max = f64::from(cands[0].1);
    let t = f64::from(cfg.temperature);
    let mut probs: Vec<f64> = cands
        .iter()
        .map(|c| ((f64::from(c.1) - max) / t).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        // Keep tokens while the mass before them is below top_p (so at least one stays).
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .take_while(|&&p| {
                let before = mass;
                mass += p;
                before < f64::from(cfg.top_p)
            })
            .count()
            .max(1);
        probs.truncate(keep);
        cands.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.next_f64() * total;
    for (c, p) in cands.iter().zip(&probs) {
        r -= p;
        if r < 0.0 {
            return c.0;
        }
    }
    cands[cands.len() - 1].0
}

/// Generates up to `cfg.max_new_tokens` tokens after `prompt`, stopping after any token in
/// `stop`. `on_token` sees each new token as it comes and may return false to stop early.
pub async fn generate(
    model: &CausalLM,
    prompt: &[u32],
    cfg: &SamplingConfig,
    stop: &[u32],
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the prompt has no tokens: it is empty, or the model's tokenizer drops all of it"
                .to_string(),
        ));
    }
    cfg.validate()?;
    model.check_length(prompt.len())?;
    let device = model.device();
    let mut cache = model.new_cache();
    let mut rng = Rng::new(cfg.seed);
    let mut input: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < cfg.max_new_tokens {
        // A model stops at the last position it has (one token at a time: its attention is a
        // row, not the prompt's square).
        if model
            .max_positions()
            .is_some_and(|max| cache.len() + input.len() > max)
        {
            break;
        }
        let ids: Vec<i64> = input.iter().map(|&t| i64::from(t)).collect();
        let n = ids.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
        let logits = model.forward(ids, Some(&mut cache));
        let [_, _, vocab] = logits.dims();
        let last = logits.slice([0..1, n - 1..n, 0..vocab]);
        let data = last
            .into_data_async()
            .await
            .map_err(|e| Error::Device(format!("{e:?}")))?;
        let logits: Vec<f32> = data
            .try_to_vec()
            .map_err(|e| Error::Device(format!("{e:?}")))?;
        let next = sample(&logits, cfg, &mut rng);
        out.push(next);
        if stop.contains(&next) || !on_token(next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// [`generate`] for native callers.
pub fn generate_blocking(
    model: &CausalLM,
    prompt: &[u32],
    cfg: &SamplingConfig,
    stop: &[u32],
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    pollster::block_on(generate(model, prompt, cfg, stop, on_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_temperature_samples_from_finite_probabilities() {
        let logits = [1.0, 3.0, 2.5, -4.0];
        for t in [1e-39, 1e-20, 1e-6, 0.5, 1e6, f32::MAX] {
            let cfg = SamplingConfig {
                temperature: t,
                ..SamplingConfig::greedy(1)
            };
            let mut rng = Rng::new(1);
            let picks: Vec<u32> = (0..50).map(|_| sample(&logits, &cfg, &mut rng)).collect();
            assert!(picks.iter().all(|&p| p < 4), "T {t}: {picks:?}");
            if t < 1e-5 {
                assert!(picks.iter().all(|&p| p == 1), "T {t} is greedy: {picks:?}");
            }
        }
    }

    #[test]
    fn greedy_is_argmax_and_sampling_respects_top_k() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let mut rng = Rng::new(7);
        assert_eq!(sample(&logits, &SamplingConfig::greedy(1), &mut rng), 1);
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 2,
            ..SamplingConfig::default()
        };
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&logits, &cfg, &mut rng) as usize] += 1;
        }
        assert_eq!(
            seen[0] + seen[3],
            0,
            "tokens outside the top 2 were sampled"
        );
        // p(1)/p(2) = e^0.1 = 1.105: both must come up often.
        assert!(seen[1] > 900 && seen[2] > 800, "{seen:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_p: 0.8,
            ..SamplingConfig::default()
        };
        let mut rng = Rng::new(1);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&logits, &cfg, &mut rng) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0);
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
    }

    #[test]
    fn same_seed_same_stream() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = SamplingConfig {
            temperature: 0.8,
            seed: 42,
            ..SamplingConfig::default()
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| sample(&logits, &cfg, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }
}
