//! The one random generator of the crate: SplitMix64, so that a seed gives the same LoRA init,
//! data order and sampling on every platform and backend.

/// SplitMix64's increment (2^64 / golden ratio): also what spreads an index over a seed.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mix whose outputs pass as independent uniform
/// draws for consecutive inputs (a counter-based draw: dropout's masks, per-layer seeds).
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Draw `index` of a counter-based stream seeded with `seed`: [`mix64`] of the index spread over
/// the seed (dropout's masks, per-layer seeds).
#[inline(always)]
pub fn mix_index(seed: u64, index: u64) -> u64 {
    mix64(seed ^ index.wrapping_mul(GOLDEN_GAMMA))
}

/// SplitMix64: small, fast, and the same stream on every platform for a given seed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
