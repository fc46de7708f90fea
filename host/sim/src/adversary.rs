//! Simulated miners, honest and adversarial, for measuring contribution-weighting policies.
//!
//! **Honest** miners share a direction: in window `w`, miner `uid` compresses `d_w + HONEST_NOISE * n_{uid,w}` per
//! parameter, where `d_w` (the window's common direction) and `n_{uid,w}` (the miner's own noise) are uniform in
//! `[-1, 1)`, each from its own seed. Honest gradients therefore agree with each other well above chance, but not
//! perfectly, as real ones do.
//!
//! **Adversaries** ([`Attack`]) upload well-formed files:
//! * `sign-flip`: its honest gradient, negated;
//! * `random`: uniform noise, compressed like a gradient;
//! * `copy`: an honest miner's upload for the window, byte for byte, uploaded about two seconds after it;
//! * `stale`: its honest gradient of the previous window (with this window's metadata);
//! * `collusion`: every colluder uploads the same crafted file, the negated common direction.

use std::collections::BTreeMap;
use std::str::FromStr;

use aggregator_codec::{Gradient, GradientMetadata, SparseParam};
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use crate::{SimError, sim_err};

/// The honest miners' noise scale relative to the common direction.
pub const HONEST_NOISE: f32 = 1.5;
/// How long after its victim a copier uploads, ms (more than S3's one-second `LastModified` resolution).
pub const COPY_DELAY_MS: u64 = 2000;

/// An adversarial miner's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attack {
    /// Its honest gradient, negated.
    SignFlip,
    /// Uniform noise, compressed.
    Random,
    /// Another (honest) miner's upload, re-uploaded later.
    Copy,
    /// Its honest gradient of the previous window.
    Stale,
    /// One crafted file (the negated common direction), uploaded by every colluder.
    Collusion,
}

impl Attack {
    /// Every attack, in table order.
    pub const ALL: [Attack; 5] = [
        Attack::SignFlip,
        Attack::Random,
        Attack::Copy,
        Attack::Stale,
        Attack::Collusion,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Attack::SignFlip => "sign-flip",
            Attack::Random => "random",
            Attack::Copy => "copy",
            Attack::Stale => "stale",
            Attack::Collusion => "collusion",
        }
    }
}

impl std::fmt::Display for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Attack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Attack::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<_> = Attack::ALL.iter().map(|a| a.name()).collect();
            format!("unknown attack {s:?}; one of {}", names.join(", "))
        })
    }
}

/// Which miners attack, and how: `KIND:COUNT[,KIND:COUNT…]` (e.g. `sign-flip:2,copy:2`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adversaries(pub Vec<(Attack, u16)>);

impl FromStr for Adversaries {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, count) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?}: expected KIND:COUNT"))?;
            let count: u16 = count.parse().map_err(|e| format!("{part:?}: count {count:?}: {e}"))?;
            if count == 0 {
                return Err(format!("{part:?}: the count must be at least 1"));
            }
            out.push((kind.parse()?, count));
        }
        Ok(Adversaries(out))
    }
}

impl Adversaries {
    /// How many miners attack.
    pub fn total(&self) -> u16 {
        self.0.iter().map(|(_, c)| *c).sum()
    }

    /// Each adversary's uid and attack: the last [`Adversaries::total`] of the miners `1..=peers`, in the order
    /// listed. At least one miner must stay honest.
    pub fn assign(&self, peers: u16) -> Result<BTreeMap<u16, Attack>, String> {
        let total = self.total();
        if total >= peers {
            return Err(format!(
                "{total} adversaries among {peers} miners: at least one must be honest"
            ));
        }
        let mut uid = peers - total + 1;
        let mut out = BTreeMap::new();
        for (attack, count) in &self.0 {
            for _ in 0..*count {
                out.insert(uid, *attack);
                uid += 1;
            }
        }
        Ok(out)
    }
}

/// What one miner uploads in a window.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The gradient.
    pub gradient: Gradient,
    /// The uid whose upload this copies, uploaded [`COPY_DELAY_MS`] later than it (copies only).
    pub copy_of: Option<u16>,
}

/// The miners of a simulated network: who is honest, who attacks, and what each uploads.
#[derive(Debug, Clone)]
pub struct Miners {
    /// Miners `1..=peers`.
    pub peers: u16,
    /// The adversaries.
    pub attacks: BTreeMap<u16, Attack>,
    /// The seed everything is drawn from.
    pub seed: u64,
}

impl Miners {
    /// `peers` miners with `adversaries` among them.
    pub fn new(peers: u16, adversaries: &Adversaries, seed: u64) -> Result<Self, String> {
        Ok(Self {
            peers,
            attacks: adversaries.assign(peers)?,
            seed,
        })
    }

    /// Whether `uid` is honest.
    pub fn honest(&self, uid: u16) -> bool {
        !self.attacks.contains_key(&uid)
    }

    /// The honest miners, in uid order.
    pub fn honest_uids(&self) -> Vec<u16> {
        (1..=self.peers).filter(|u| self.honest(*u)).collect()
    }

    /// The honest miner a copier copies: the copiers take the honest miners in turn.
    pub fn victim(&self, uid: u16) -> u16 {
        let copiers: Vec<u16> = self
            .attacks
            .iter()
            .filter(|(_, a)| **a == Attack::Copy)
            .map(|(u, _)| *u)
            .collect();
        let honest = self.honest_uids();
        let i = copiers.iter().position(|u| *u == uid).unwrap_or(0);
        honest[i % honest.len()]
    }

    /// What `uid` uploads in window `w`.
    pub fn upload(&self, model: &ModelSpec, cpu: &Cpu, uid: u16, w: u64) -> Result<Upload, SimError> {
        let seed = self.seed;
        let dense = |u: u64, window: u64, sign: f32| {
            move |pi: usize, n: usize| {
                let d = uniform(seed ^ 0xd1d1, window, pi, n);
                let noise = uniform(seed ^ (u << 24), window, pi, n);
                d.iter()
                    .zip(&noise)
                    .map(|(d, e)| sign * (d + HONEST_NOISE * e))
                    .collect::<Vec<f32>>()
            }
        };
        let upload = |gradient| Upload {
            gradient,
            copy_of: None,
        };
        let u = uid as u64;
        Ok(match self.attacks.get(&uid) {
            None => upload(gradient(model, cpu, w, dense(u, w, 1.0))?),
            Some(Attack::SignFlip) => upload(gradient(model, cpu, w, dense(u, w, -1.0))?),
            Some(Attack::Stale) => upload(gradient(model, cpu, w, dense(u, w.saturating_sub(1), 1.0))?),
            Some(Attack::Random) => upload(gradient(model, cpu, w, |pi, n| {
                uniform(seed ^ 0xbad ^ (u << 24), w, pi, n)
            })?),
            Some(Attack::Collusion) => upload(gradient(model, cpu, w, |pi, n| {
                uniform(seed ^ 0xd1d1, w, pi, n).into_iter().map(|d| -d).collect()
            })?),
            Some(Attack::Copy) => {
                let victim = self.victim(uid);
                Upload {
                    gradient: gradient(model, cpu, w, dense(victim as u64, w, 1.0))?,
                    copy_of: Some(victim),
                }
            }
        })
    }
}

/// `n` values uniform in `[-1, 1)` for parameter `pi` of window `w`, from `seed`.
fn uniform(seed: u64, w: u64, pi: usize, n: usize) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(
        seed ^ w.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (pi as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// A gradient for window `w` whose parameter `pi` compresses `dense(pi, numel)` (on `cpu`, the miner-side code).
pub(crate) fn gradient(
    model: &ModelSpec,
    cpu: &Cpu,
    w: u64,
    dense: impl Fn(usize, usize) -> Vec<f32> + Sync,
) -> Result<Gradient, SimError> {
    let params = model
        .params
        .par_iter()
        .enumerate()
        .map(|(pi, p)| {
            let l = &p.layout;
            let x = dense(pi, l.numel());
            let (mut idxs, mut vals) = (vec![0i16; l.sparse_len()], vec![0f32; l.sparse_len()]);
            cpu.compress(l, &x, &mut idxs, &mut vals).map_err(sim_err)?;
            Ok(Some(SparseParam { idxs, vals }))
        })
        .collect::<Result<Vec<_>, SimError>>()?;
    Ok(Gradient {
        params,
        metadata: GradientMetadata {
            pages_info: vec![],
            window: Some(w as i64),
        },
        global_step: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_assigns() {
        let a: Adversaries = "sign-flip:2, copy:1".parse().unwrap();
        assert_eq!(a.total(), 3);
        let m = a.assign(6).unwrap();
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![(4, Attack::SignFlip), (5, Attack::SignFlip), (6, Attack::Copy)]
        );
        assert!("flip:2".parse::<Adversaries>().unwrap_err().contains("unknown attack"));
        assert!("copy:0".parse::<Adversaries>().unwrap_err().contains("at least 1"));
        assert!("copy".parse::<Adversaries>().unwrap_err().contains("KIND:COUNT"));
        assert!(a.assign(3).unwrap_err().contains("at least one must be honest"));
    }

    #[test]
    fn a_copy_is_its_victims_upload_and_colluders_agree() {
        let model = ModelSpec::preset("tiny").unwrap();
        let cpu = Cpu::new();
        let miners = Miners::new(6, &"copy:1,collusion:2".parse().unwrap(), 7).unwrap();
        let copy = miners.upload(&model, &cpu, 4, 10).unwrap();
        assert_eq!(copy.copy_of, Some(1));
        let victim = miners.upload(&model, &cpu, 1, 10).unwrap();
        assert_eq!(
            copy.gradient.to_bytes(&model).unwrap(),
            victim.gradient.to_bytes(&model).unwrap()
        );
        let (a, b) = (
            miners.upload(&model, &cpu, 5, 10).unwrap(),
            miners.upload(&model, &cpu, 6, 10).unwrap(),
        );
        assert_eq!(
            a.gradient.to_bytes(&model).unwrap(),
            b.gradient.to_bytes(&model).unwrap()
        );
        let honest2 = miners.upload(&model, &cpu, 2, 10).unwrap();
        assert_ne!(
            honest2.gradient.to_bytes(&model).unwrap(),
            victim.gradient.to_bytes(&model).unwrap()
        );
    }
}
