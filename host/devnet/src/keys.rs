//! Substrate storage keys and the values the devnet writes, encoded as the runtime does.
//!
//! Hand-written on purpose: the devnet must not share code with the client it tests (subxt computes keys from the
//! metadata's hashers; if the two disagree, the client's reads find nothing and the chain tests fail).
//! Hashers are the ones Subtensor declares (see `../shared/notes/chain.md` §3).

use parity_scale_codec::{Compact, Encode};
use sp_crypto_hashing::{blake2_128, twox_64, twox_128};

/// A 32-byte account id (a hotkey).
pub type AccountId = [u8; 32];

/// `twox128(pallet) ++ twox128(item)`: the key of a plain value and the prefix of a map.
pub fn prefix(pallet: &str, item: &str) -> Vec<u8> {
    let mut key = twox_128(pallet.as_bytes()).to_vec();
    key.extend_from_slice(&twox_128(item.as_bytes()));
    key
}

/// One hashed key part.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// `Identity`: the encoded key itself.
    Identity(&'a [u8]),
    /// `Twox64Concat`: `twox64(k) ++ k`.
    Twox64Concat(&'a [u8]),
    /// `Blake2_128Concat`: `blake2_128(k) ++ k`.
    Blake2_128Concat(&'a [u8]),
}

/// The full key of a map entry.
pub fn map_key(pallet: &str, item: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let mut key = prefix(pallet, item);
    for part in parts {
        match part {
            Part::Identity(k) => key.extend_from_slice(k),
            Part::Twox64Concat(k) => {
                key.extend_from_slice(&twox_64(k));
                key.extend_from_slice(k);
            }
            Part::Blake2_128Concat(k) => {
                key.extend_from_slice(&blake2_128(k));
                key.extend_from_slice(k);
            }
        }
    }
    key
}

/// `Timestamp::Now` (hashed once: every storage read compares against it).
pub fn timestamp_now() -> &'static [u8] {
    static KEY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| prefix("Timestamp", "Now"));
    &KEY
}

/// `SubtensorModule::NetworksAdded(netuid)`.
pub fn networks_added(netuid: u16) -> Vec<u8> {
    map_key(
        "SubtensorModule",
        "NetworksAdded",
        &[Part::Identity(&netuid.to_le_bytes())],
    )
}

/// `SubtensorModule::SubnetworkN(netuid)`.
pub fn subnetwork_n(netuid: u16) -> Vec<u8> {
    map_key(
        "SubtensorModule",
        "SubnetworkN",
        &[Part::Identity(&netuid.to_le_bytes())],
    )
}

/// `SubtensorModule::Keys(netuid, uid)`.
pub fn keys(netuid: u16, uid: u16) -> Vec<u8> {
    map_key(
        "SubtensorModule",
        "Keys",
        &[
            Part::Identity(&netuid.to_le_bytes()),
            Part::Identity(&uid.to_le_bytes()),
        ],
    )
}

/// `SubtensorModule::Uids(netuid, hotkey)`.
pub fn uids(netuid: u16, hotkey: &AccountId) -> Vec<u8> {
    map_key(
        "SubtensorModule",
        "Uids",
        &[Part::Identity(&netuid.to_le_bytes()), Part::Blake2_128Concat(hotkey)],
    )
}

/// `SubtensorModule::TotalHotkeyAlpha(hotkey, netuid)`.
pub fn total_hotkey_alpha(hotkey: &AccountId, netuid: u16) -> Vec<u8> {
    map_key(
        "SubtensorModule",
        "TotalHotkeyAlpha",
        &[Part::Blake2_128Concat(hotkey), Part::Identity(&netuid.to_le_bytes())],
    )
}

/// `SubtensorModule::Incentive(netuid)`.
pub fn incentive(netuid: u16) -> Vec<u8> {
    map_key("SubtensorModule", "Incentive", &[Part::Identity(&netuid.to_le_bytes())])
}

/// `Commitments::CommitmentOf(netuid, hotkey)`.
pub fn commitment_of(netuid: u16, hotkey: &AccountId) -> Vec<u8> {
    map_key(
        "Commitments",
        "CommitmentOf",
        &[Part::Identity(&netuid.to_le_bytes()), Part::Twox64Concat(hotkey)],
    )
}

/// SCALE of `Registration { deposit, block, info: { fields: [Raw(bytes)] } }`, the shape
/// `Commitments.set_commitment(netuid, {"fields": [[{"Raw128": bytes}]]})` stores. Data longer than 128 bytes is
/// written as `BigRaw` (tag 136), which newer runtimes use for long values.
pub fn registration(deposit: u64, block: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    deposit.encode_to(&mut out);
    block.encode_to(&mut out);
    Compact(1u32).encode_to(&mut out);
    if data.len() <= 128 {
        out.push(data.len() as u8 + 1);
        out.extend_from_slice(data);
    } else {
        out.push(136);
        data.to_vec().encode_to(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_prefixes() {
        // Known constants of every Substrate chain.
        assert_eq!(
            hex::encode(timestamp_now()),
            "f0c365c3cf59d671eb72da0e7a4113c49f1f0515f462cdcf84e0f1d6045dfcbb"
        );
        assert_eq!(
            hex::encode(prefix("System", "Number")),
            "26aa394eea5630e07c48ae0c9558cef702a5c1b19ab7a04f536c519aca4983ac"
        );
    }

    #[test]
    fn registration_layout() {
        let r = registration(0, 5, &[b'a'; 128]);
        assert_eq!(&r[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!((r[12], r[13], r.len()), (4, 129, 14 + 128), "compact(1), Raw128");
    }
}
