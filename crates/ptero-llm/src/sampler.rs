//! Picks the next token from logits: greedy, or temperature sampling restricted by top-k
//! and top-p, with a seeded generator so runs are reproducible.

/// How to choose tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 42,
        }
    }
}

impl SamplerConfig {
    /// Checks the settings: a finite temperature >= 0, top-k >= 1, top-p in (0, 1].
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::InvalidArgument(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1, got 0".into());
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad(format!("top-p must be in (0, 1], got {p}"));
        }
        Ok(())
    }
}

/// A sampler with its random state and scratch space (reused across tokens).
pub struct Sampler {
    config: SamplerConfig,
    state: u64,
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler {
            config,
            state: config.seed,
            scratch: Vec::new(),
        }
    }

    /// SplitMix64: small, fast and good enough for sampling.
    fn next_f32(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next token id. NaN logits are never chosen.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            let mut best = (f32::NEG_INFINITY, 0u32);
            for (i, &l) in logits.iter().enumerate() {
                if l > best.0 {
                    best = (l, i as u32);
                }
            }
            best.1
        };
        if self.config.temperature <= 0.0 || logits.is_empty() {
            return argmax();
        }
        let t = self.config.temperature;
        let max = logits
            .iter()
            .copied()
            .filter(|l| !l.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (((l - max) / t).exp(), i as u32)),
        );
        let restrict = self.config.top_k.is_some() || self.config.top_p.is_some_and(|p| p < 1.0);
        if restrict {
            self.scratch
                .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            if let Some(k) = self.config.top_k {
                self.scratch.truncate(k.max(1));
            }
            if let Some(p) = self.config.top_p.filter(|&p| p < 1.0) {
                let total: f32 = self.scratch.iter().map(|x| x.0).sum();
                let mut acc = 0.0;
                let mut keep = self.scratch.len();
                for (i, x) in self.scratch.iter().enumerate() {
                    acc += x.0 / total;
                    if acc >= p {
                        keep = i + 1;
                        break;
                    }
                }
                self.scratch.truncate(keep.max(1));
            }
        }
        let total: f32 = self.scratch.iter().map(|x| x.0).sum();
        if total.is_nan() || total <= 0.0 {
            return argmax();
        }
        let r = self.next_f32() * total;
        let mut acc = 0.0;
        for &(w, id) in &self.scratch {
            acc += w;
            if r < acc {
                return id;
            }
        }
        self.scratch.last().map_or_else(argmax, |x| x.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_top_p_and_seeds() {
        let logits = [1.0f32, 3.0, 2.0, f32::NAN, 3.0];
        assert_eq!(Sampler::new(SamplerConfig::default()).sample(&logits), 1);
        // top-k 1 is greedy whatever the temperature.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: Some(1),
            top_p: None,
            seed: 1,
        });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        // A tiny top-p keeps only the single most likely token.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.01),
            seed: 1,
        });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        // Same seed, same sequence; sampling covers several tokens but never NaN.
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 7,
        };
        let (mut a, mut b) = (Sampler::new(cfg), Sampler::new(cfg));
        let sa: Vec<u32> = (0..200).map(|_| a.sample(&logits)).collect();
        let sb: Vec<u32> = (0..200).map(|_| b.sample(&logits)).collect();
        assert_eq!(sa, sb);
        assert!(!sa.contains(&3));
        assert!(sa.contains(&0) && sa.contains(&2));
        // Frequencies follow the softmax: token 1 and 4 (equal logits) dominate.
        let ones = sa.iter().filter(|&&t| t == 1 || t == 4).count();
        assert!(ones > 120, "{ones}");
    }
}
