//! The devnet's chain state: a list of blocks, each with a header hashed as Substrate does, a timestamp and a
//! copy-on-write snapshot of storage.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parity_scale_codec::{Compact, Encode};
use sp_crypto_hashing::blake2_256;

use crate::keys;

/// A storage snapshot; blocks share it until the next write.
pub(crate) type Storage = Arc<BTreeMap<Vec<u8>, Vec<u8>>>;

/// One produced block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub number: u64,
    pub hash: [u8; 32],
    pub parent_hash: [u8; 32],
    pub state_root: [u8; 32],
    pub extrinsics_root: [u8; 32],
    pub timestamp_ms: u64,
    pub storage: Storage,
}

impl Block {
    fn new(number: u64, parent_hash: [u8; 32], timestamp_ms: u64, storage: Storage) -> Self {
        // No trie: the roots are stand-ins that differ per block (the devnet serves no proofs).
        let state_root = blake2_256(&(b"devnet-state", number, timestamp_ms).encode());
        let extrinsics_root = blake2_256(&(b"devnet-extrinsics", number).encode());
        let mut block = Self {
            number,
            hash: [0; 32],
            parent_hash,
            state_root,
            extrinsics_root,
            timestamp_ms,
            storage,
        };
        block.hash = blake2_256(&block.header_scale());
        block
    }

    /// SCALE of `Header { parent_hash, number: Compact, state_root, extrinsics_root, digest: [] }`: subxt hashes the
    /// headers it receives with the chain's hasher, so the devnet's hashes must be these.
    fn header_scale(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(100);
        self.parent_hash.encode_to(&mut out);
        Compact(self.number).encode_to(&mut out);
        self.state_root.encode_to(&mut out);
        self.extrinsics_root.encode_to(&mut out);
        Compact(0u32).encode_to(&mut out); // digest logs
        out
    }

    /// The header as Substrate's JSON-RPC writes it.
    pub fn header_json(&self) -> serde_json::Value {
        serde_json::json!({
            "parentHash": hex0x(&self.parent_hash),
            "number": format!("0x{:x}", self.number),
            "stateRoot": hex0x(&self.state_root),
            "extrinsicsRoot": hex0x(&self.extrinsics_root),
            "digest": { "logs": [] },
        })
    }

    /// A storage value at this block; `Timestamp::Now` is the block's own timestamp.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if key == keys::timestamp_now() {
            return Some(self.timestamp_ms.encode());
        }
        self.storage.get(key).cloned()
    }

    /// Keys under `prefix`, strictly after `start`, in order, at most `count`.
    pub fn keys_paged(&self, prefix: &[u8], count: usize, start: Option<&[u8]>) -> Vec<Vec<u8>> {
        let ts = keys::timestamp_now();
        let after = |k: &[u8]| start.is_none_or(|s| k > s);
        let mut out: Vec<Vec<u8>> = self
            .storage
            .range(prefix.to_vec()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .filter(|k| after(k))
            .take(count)
            .cloned()
            .collect();
        if ts.starts_with(prefix) && after(ts) {
            out.push(ts.to_vec());
            out.sort();
            out.truncate(count);
        }
        out
    }
}

/// `0x`-prefixed lower-case hex.
pub(crate) fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Where timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    /// The wall clock when the block is produced, as on a real chain (the simulator needs this: miners' uploads are
    /// judged against block times).
    WallClock,
    /// `start_ms + number · step_ms`: reproducible, for tests.
    Fixed {
        /// Timestamp of block 0.
        start_ms: u64,
        /// Added per block.
        step_ms: u64,
    },
}

/// The chain: blocks (pruned to `retain`, like a non-archive node) and the storage the next block will carry.
#[derive(Debug)]
pub(crate) struct ChainState {
    blocks: VecDeque<Block>,
    by_hash: HashMap<[u8; 32], u64>,
    pending: Storage,
    retain: usize,
    timestamps: Timestamps,
}

impl ChainState {
    pub fn new(storage: BTreeMap<Vec<u8>, Vec<u8>>, retain: usize, timestamps: Timestamps) -> Self {
        let mut state = Self {
            blocks: VecDeque::new(),
            by_hash: HashMap::new(),
            pending: Arc::new(storage),
            retain: retain.max(2),
            timestamps,
        };
        state.push(0, [0; 32]);
        state
    }

    fn timestamp(&self, number: u64) -> u64 {
        match self.timestamps {
            Timestamps::WallClock => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Timestamps::Fixed { start_ms, step_ms } => start_ms.saturating_add(number.saturating_mul(step_ms)),
        }
    }

    fn push(&mut self, number: u64, parent: [u8; 32]) -> &Block {
        let block = Block::new(number, parent, self.timestamp(number), self.pending.clone());
        self.by_hash.insert(block.hash, number);
        self.blocks.push_back(block);
        while self.blocks.len() > self.retain {
            if let Some(old) = self.blocks.pop_front() {
                self.by_hash.remove(&old.hash);
            }
        }
        self.blocks.back().expect("just pushed")
    }

    /// Appends a block carrying the pending storage; returns it.
    pub fn produce(&mut self) -> Block {
        let best = self.best();
        let (number, parent) = (best.number + 1, best.hash);
        self.push(number, parent).clone()
    }

    /// The newest block.
    pub fn best(&self) -> &Block {
        self.blocks.back().expect("the genesis block is always there")
    }

    /// A block by number, if not pruned.
    pub fn by_number(&self, number: u64) -> Option<&Block> {
        let first = self.blocks.front()?.number;
        self.blocks.get(usize::try_from(number.checked_sub(first)?).ok()?)
    }

    /// A block by hash, if known and not pruned.
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<&Block> {
        self.by_number(*self.by_hash.get(hash)?)
    }

    /// Writes (or, with `None`, removes) a storage value for the next block.
    pub fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let storage = Arc::make_mut(&mut self.pending);
        match value {
            Some(v) => storage.insert(key, v),
            None => storage.remove(&key),
        };
    }

    /// The pending value at `key`.
    pub fn pending(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.pending.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_chain_by_hash_and_prune() {
        let mut s = ChainState::new(
            BTreeMap::new(),
            3,
            Timestamps::Fixed {
                start_ms: 1000,
                step_ms: 12,
            },
        );
        let b1 = s.produce();
        let b2 = s.produce();
        assert_eq!(b2.parent_hash, b1.hash);
        assert_eq!(b2.get(keys::timestamp_now()), Some(1024u64.encode()));
        s.set(b"k".to_vec(), Some(b"v".to_vec()));
        let b3 = s.produce();
        assert!(
            b2.get(b"k").is_none() && b3.get(b"k").is_some(),
            "writes show from the next block on"
        );
        assert!(s.by_number(0).is_none(), "pruned");
        assert_eq!(s.by_hash(&b3.hash).map(|b| b.number), Some(3));
        assert_eq!(s.best().number, 3);
    }

    #[test]
    fn keys_paged_in_order_after_start() {
        let mut m = BTreeMap::new();
        for k in [b"ab1", b"ab2", b"ab3", b"ac1"] {
            m.insert(k.to_vec(), vec![1]);
        }
        let s = ChainState::new(m, 4, Timestamps::WallClock);
        let b = s.best();
        assert_eq!(b.keys_paged(b"ab", 10, None).len(), 3);
        assert_eq!(
            b.keys_paged(b"ab", 10, Some(b"ab1")),
            vec![b"ab2".to_vec(), b"ab3".to_vec()]
        );
        assert_eq!(b.keys_paged(b"ab", 1, Some(b"ab1")), vec![b"ab2".to_vec()]);
    }
}
