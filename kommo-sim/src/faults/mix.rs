//! A fault mix: a random fault for a share of the requests, from a seeded generator.
//!
//! Scripted queues test one failure at a time; a mix tests that a client survives failures of
//! every kind arriving at any point of a long sync. The generator is seeded (ChaCha, as the data
//! generator, so draws are the same on every platform and rand release): the same seed and the
//! same sequence of requests give the same faults, so a failing soak run can be replayed.
//! Concurrent requests take their draws in arrival order at the lock, which a scheduler may
//! shuffle; only sequential clients replay exactly.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Fault;

/// What share of requests fail, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultMix {
    /// Probability, in 0..=1, that a counted request finding the fault queue empty gets a fault.
    pub rate: f64,
    /// The faults drawn from, each equally likely (list one twice to make it twice as likely).
    pub kinds: Vec<Fault>,
    /// Seed of the draws.
    pub seed: u64,
}

/// Why a mix was refused. Each message names the offending value, as the control API's 400
/// shows it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FaultMixError {
    #[error("fault mix rate {0} is outside 0..=1")]
    Rate(f64),
    #[error("fault mix kinds is empty: name at least one fault kind")]
    NoKinds,
    /// A kind [`Fault::parse`] refused; carries its message.
    #[error("fault mix kinds: {0}")]
    Kind(String),
}

impl FaultMix {
    /// A mix of `kinds` at `rate`, drawn from `seed` (checked when it is set).
    pub fn new(rate: f64, kinds: Vec<Fault>, seed: u64) -> FaultMix {
        FaultMix { rate, kinds, seed }
    }

    /// A mix from the control API's names (see [`Fault::parse`]; `retry_after` applies to every
    /// kind that takes it), checked.
    pub fn parse<S: AsRef<str>>(
        rate: f64,
        kinds: &[S],
        seed: u64,
        retry_after: Option<u64>,
    ) -> Result<FaultMix, FaultMixError> {
        let kinds = kinds
            .iter()
            .map(|k| Fault::parse(k.as_ref(), retry_after).map_err(FaultMixError::Kind))
            .collect::<Result<Vec<_>, _>>()?;
        let mix = FaultMix::new(rate, kinds, seed);
        mix.check()?;
        Ok(mix)
    }

    /// Refuses a rate outside 0..=1 (NaN included) and an empty list of kinds.
    pub fn check(&self) -> Result<(), FaultMixError> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(FaultMixError::Rate(self.rate));
        }
        if self.kinds.is_empty() {
            return Err(FaultMixError::NoKinds);
        }
        Ok(())
    }
}

/// A checked mix and where its draws have got to.
#[derive(Debug)]
pub(super) struct MixDraws {
    mix: FaultMix,
    rng: ChaCha8Rng,
}

impl MixDraws {
    pub(super) fn new(mix: FaultMix) -> Result<MixDraws, FaultMixError> {
        mix.check()?;
        let rng = ChaCha8Rng::seed_from_u64(mix.seed);
        Ok(MixDraws { mix, rng })
    }

    pub(super) fn mix(&self) -> &FaultMix {
        &self.mix
    }

    /// The fault for one request, if it gets one. Every request consumes a draw, faulted or
    /// not, so the sequence depends only on the seed and the number of requests.
    pub(super) fn draw(&mut self) -> Option<Fault> {
        if !self.rng.gen_bool(self.mix.rate) {
            return None;
        }
        let i = self.rng.gen_range(0..self.mix.kinds.len());
        Some(self.mix.kinds[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(mix: FaultMix, n: usize) -> Vec<Option<Fault>> {
        let mut d = MixDraws::new(mix).unwrap();
        (0..n).map(|_| d.draw()).collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_faults() {
        let kinds = vec![Fault::Status(500), Fault::Reset, Fault::Timeout];
        let a = draws(FaultMix::new(0.3, kinds.clone(), 7), 200);
        assert_eq!(a, draws(FaultMix::new(0.3, kinds.clone(), 7), 200));
        assert_ne!(a, draws(FaultMix::new(0.3, kinds, 8), 200));
        let hits = a.iter().flatten().count();
        assert!((30..=90).contains(&hits), "about 30 % faulted, got {hits}");
    }

    #[test]
    fn rate_one_always_and_rate_zero_never() {
        let all = draws(FaultMix::new(1.0, vec![Fault::Huge], 1), 100);
        assert!(all.iter().all(|f| *f == Some(Fault::Huge)));
        let none = draws(FaultMix::new(0.0, vec![Fault::Huge], 1), 100);
        assert!(none.iter().all(Option::is_none));
    }

    #[test]
    fn bad_mixes_name_the_bad_value() {
        let e = FaultMix::parse(1.5, &["500"], 0, None).unwrap_err();
        assert_eq!(e, FaultMixError::Rate(1.5));
        assert!(e.to_string().contains("1.5"));
        let e = FaultMix::parse::<&str>(0.1, &[], 0, None).unwrap_err();
        assert_eq!(e, FaultMixError::NoKinds);
        let e = FaultMix::parse(0.1, &["500", "bogus"], 0, None).unwrap_err();
        assert!(e.to_string().contains("\"bogus\""), "{e}");
        assert!(MixDraws::new(FaultMix::new(f64::NAN, vec![Fault::Reset], 0)).is_err());
        let ok = FaultMix::parse(0.05, &["500", "429_retry_after"], 7, Some(3)).unwrap();
        assert_eq!(
            ok.kinds,
            [Fault::Status(500), Fault::Status429WithHeader(3)]
        );
    }
}
