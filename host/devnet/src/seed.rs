//! What the devnet serves: neurons and commitments, from a JSON seed file or the API.

use serde::Deserialize;
use sp_crypto_hashing::blake2_256;

use crate::DevnetError;
use crate::keys::AccountId;

/// The seed file's format, documented for `aggregator devnet --help` too.
pub const SEED_FORMAT: &str = r#"Seed file (JSON; every key but "netuid" optional; unknown keys are an error):
  {
    "netuid": 3,
    "neurons": [
      { "uid": 0,
        "hotkey": "0x<64 hex digits>",   // default: blake2_256("devnet/hotkey/<uid>")
        "stake": 25000000000000,          // TotalHotkeyAlpha on the subnet, in rao (1e-9)
        "incentive": 0.25,                // 0..=1, stored as u16 like Subtensor's Incentive vector
        "commitment": "<128 characters>"  // stored as Registration{fields:[Raw]}; any length is accepted
      }
    ],
    "raw_commitments": [
      { "hotkey": "0x<64 hex>", "registration": "0x<SCALE bytes of a Commitments::Registration>" }
    ]
  }
Uids must be distinct and below 4096. Raw commitments are stored as given, so malformed values can be served."#;

/// A seed: one subnet's neurons and commitments.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// The subnet.
    pub netuid: u16,
    /// Registered neurons.
    #[serde(default)]
    pub neurons: Vec<NeuronSeed>,
    /// Commitments stored byte for byte (for malformed cases).
    #[serde(default)]
    pub raw_commitments: Vec<RawCommitment>,
}

/// One neuron.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NeuronSeed {
    /// Uid on the subnet.
    pub uid: u16,
    /// Hotkey as `0x` + 64 hex digits; default [`dev_hotkey`].
    #[serde(default)]
    pub hotkey: Option<String>,
    /// Alpha stake on the subnet, in rao.
    #[serde(default)]
    pub stake: u64,
    /// Incentive in `0..=1`.
    #[serde(default)]
    pub incentive: f64,
    /// The committed string (Templar: bucket account id + read key id + read secret, 128 characters).
    #[serde(default)]
    pub commitment: Option<String>,
}

/// A commitment stored as raw SCALE bytes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCommitment {
    /// Hotkey as `0x` + 64 hex digits.
    pub hotkey: String,
    /// `0x`-prefixed SCALE bytes of a `Registration` (or anything else).
    pub registration: String,
}

/// The hotkey the devnet gives `uid` when the seed names none.
pub fn dev_hotkey(uid: u16) -> AccountId {
    blake2_256(format!("devnet/hotkey/{uid}").as_bytes())
}

/// Parses `0x` + hex.
pub(crate) fn parse_hex(field: &str, s: &str) -> Result<Vec<u8>, DevnetError> {
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| DevnetError::Seed(format!("{field}: {s:?} does not start with 0x")))?;
    hex::decode(digits).map_err(|e| DevnetError::Seed(format!("{field}: {s:?}: {e}")))
}

/// Parses a hotkey.
pub(crate) fn parse_hotkey(field: &str, s: &str) -> Result<AccountId, DevnetError> {
    let bytes = parse_hex(field, s)?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| DevnetError::Seed(format!("{field}: {} bytes, a hotkey has 32", b.len())))
}

impl Seed {
    /// Parses and checks a seed file's text.
    pub fn from_json(text: &str) -> Result<Self, DevnetError> {
        let seed: Seed = serde_json::from_str(text).map_err(|e| DevnetError::Seed(e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, n) in seed.neurons.iter().enumerate() {
            if n.uid >= 4096 || !seen.insert(n.uid) {
                return Err(DevnetError::Seed(format!(
                    "neurons[{i}]: uid {} is repeated or ≥ 4096",
                    n.uid
                )));
            }
            if !(0.0..=1.0).contains(&n.incentive) {
                return Err(DevnetError::Seed(format!(
                    "neurons[{i}].incentive: {} is outside 0..=1",
                    n.incentive
                )));
            }
            if let Some(h) = &n.hotkey {
                parse_hotkey(&format!("neurons[{i}].hotkey"), h)?;
            }
        }
        for (i, c) in seed.raw_commitments.iter().enumerate() {
            parse_hotkey(&format!("raw_commitments[{i}].hotkey"), &c.hotkey)?;
            parse_hex(&format!("raw_commitments[{i}].registration"), &c.registration)?;
        }
        Ok(seed)
    }
}

/// A neuron as the devnet stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Neuron {
    /// Uid.
    pub uid: u16,
    /// Hotkey.
    pub hotkey: AccountId,
    /// Alpha stake in rao.
    pub stake: u64,
    /// Incentive in `0..=1`.
    pub incentive: f64,
}

impl NeuronSeed {
    /// The stored form (the seed was checked by [`Seed::from_json`]).
    pub(crate) fn neuron(&self) -> Result<Neuron, DevnetError> {
        let hotkey = match &self.hotkey {
            Some(h) => parse_hotkey("hotkey", h)?,
            None => dev_hotkey(self.uid),
        };
        Ok(Neuron {
            uid: self.uid,
            hotkey,
            stake: self.stake,
            incentive: self.incentive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_with_the_field_named() {
        let s = Seed::from_json(r#"{"netuid": 3, "neurons": [{"uid": 1, "stake": 5, "commitment": "x"}]}"#).unwrap();
        assert_eq!((s.netuid, s.neurons[0].uid, s.neurons[0].stake), (3, 1, 5));
        let err = |t: &str| Seed::from_json(t).unwrap_err().to_string();
        assert!(err(r#"{"netuid": 3, "neurons": [{"uid": 1}, {"uid": 1}]}"#).contains("neurons[1]"));
        assert!(err(r#"{"netuid": 3, "neurons": [{"uid": 1, "hotkey": "0x12"}]}"#).contains("neurons[0].hotkey"));
        assert!(err(r#"{"netuid": 3, "nerons": []}"#).contains("nerons"));
        assert!(err(r#"{"netuid": 3, "neurons": [{"uid": 1, "incentive": 2}]}"#).contains("incentive"));
    }
}
