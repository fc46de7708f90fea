//! The Subtensor client on subxt 0.51 (`../shared/notes/chain.md` §1): the dynamic API (metadata fetched at run
//! time, so runtime upgrades that keep the storage layout do not break us), an explicit `LegacyBackend` (the
//! combined backend was seen to never deliver blocks), on a reconnecting RPC client that retries single calls.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use subxt::backend::LegacyBackend;
use subxt::dynamic::storage;
use subxt::rpcs::client::reconnecting_rpc_client::ExponentialBackoff;
use subxt::rpcs::client::{ReconnectingRpcClient, RpcClient};
use subxt::utils::AccountId32;
use subxt::{OnlineClient, PolkadotConfig};

use crate::metagraph::{Commitments, DefaultedField, Metagraph, Neuron};
use crate::{Chain, ChainError};

/// The chain's client type.
pub type Client = OnlineClient<PolkadotConfig>;

/// How to reach the chain.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Give up connecting after this long (the reconnecting client alone would retry forever).
    pub connect_timeout: Duration,
    /// Each request's time limit.
    pub request_timeout: Duration,
    /// The RPC layer's reconnect delays grow from 100 ms to this cap.
    pub reconnect_max_delay: Duration,
    /// Largest response accepted (the metadata is about 300 KB; storage pages are small).
    pub max_response_bytes: u32,
    /// Concurrent storage reads when reading the metagraph.
    pub concurrency: usize,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(10),
            max_response_bytes: 16 << 20,
            concurrency: 16,
        }
    }
}

/// A connected Subtensor client.
#[derive(Clone)]
pub struct SubtensorClient {
    client: Client,
    config: Arc<ClientConfig>,
}

fn rpc_err<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> ChainError {
    let what = what.into();
    move |e| ChainError::Rpc {
        what,
        reason: e.to_string(),
    }
}

fn decode_err(what: impl Into<String>, e: impl std::fmt::Display) -> ChainError {
    ChainError::Decode {
        what: what.into(),
        reason: e.to_string(),
    }
}

impl SubtensorClient {
    /// Connects (bounded by `connect_timeout`) and reads the genesis hash.
    pub async fn connect(config: ClientConfig) -> Result<Self, ChainError> {
        let url = config.url.clone();
        let connect = async {
            let inner = ReconnectingRpcClient::builder()
                .retry_policy(ExponentialBackoff::from_millis(100).max_delay(config.reconnect_max_delay))
                .request_timeout(config.request_timeout)
                .max_response_size(config.max_response_bytes)
                .build(&url)
                .await
                .map_err(|e| ChainError::Connect {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            let backend = LegacyBackend::<PolkadotConfig>::builder().build(RpcClient::new(inner));
            OnlineClient::<PolkadotConfig>::from_backend(Arc::new(backend))
                .await
                .map_err(|e| ChainError::Connect {
                    url: url.clone(),
                    reason: e.to_string(),
                })
        };
        let client = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| ChainError::Connect {
                url: url.clone(),
                reason: format!("no answer within {:?}", config.connect_timeout),
            })??;
        Ok(Self {
            client,
            config: Arc::new(config),
        })
    }

    /// The underlying subxt client.
    pub fn subxt(&self) -> &Client {
        &self.client
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    async fn at(
        &self,
        block: Option<u64>,
    ) -> Result<
        subxt::client::ClientAtBlock<PolkadotConfig, subxt::client::OnlineClientAtBlockImpl<PolkadotConfig>>,
        ChainError,
    > {
        match block {
            Some(n) => self.client.at_block(n).await.map_err(|e| match e {
                subxt::error::OnlineClientAtBlockError::BlockNotFound { .. } => ChainError::BlockNotFound(n),
                e => ChainError::Rpc {
                    what: format!("block {n}"),
                    reason: e.to_string(),
                },
            }),
            None => self.client.at_current_block().await.map_err(|e| ChainError::Rpc {
                what: "the finalized head".into(),
                reason: e.to_string(),
            }),
        }
    }

    async fn timed<T>(&self, what: &str, f: impl Future<Output = Result<T, ChainError>>) -> Result<T, ChainError> {
        // A whole read (several requests) gets twice a request's limit.
        tokio::time::timeout(self.config.request_timeout * 2, f)
            .await
            .map_err(|_| ChainError::Timeout(what.to_string()))?
    }
}

impl Chain for SubtensorClient {
    async fn head(&self) -> Result<u64, ChainError> {
        self.timed("head", async { Ok(self.at(None).await?.block_number()) })
            .await
    }

    async fn timestamp_ms(&self, block: u64) -> Result<u64, ChainError> {
        self.timed(&format!("Timestamp::Now at {block}"), async {
            let at = self.at(Some(block)).await?;
            at.storage()
                .fetch(storage::<(), u64>("Timestamp", "Now"), ())
                .await
                .map_err(rpc_err(format!("Timestamp::Now at {block}")))?
                .decode()
                .map_err(|e| decode_err(format!("Timestamp::Now at {block}"), e))
        })
        .await
    }

    async fn block_hash(&self, block: u64) -> Result<Option<String>, ChainError> {
        self.timed(&format!("hash of block {block}"), async {
            let at = self.at(Some(block)).await?;
            let hash = at.block_hash();
            let bytes: &[u8] = hash.as_ref();
            Ok(Some(format!("0x{}", hex::encode(bytes))))
        })
        .await
    }

    async fn metagraph(&self, netuid: u16, block: Option<u64>) -> Result<Metagraph, ChainError> {
        self.timed(&format!("metagraph of subnet {netuid}"), async {
            let at = self.at(block).await?;
            let number = at.block_number();
            let what = |item: &str| format!("SubtensorModule::{item}({netuid}) at {number}");

            // Uids and hotkeys: Keys(netuid, uid) -> hotkey (both keys Identity-hashed, so the uid is recoverable).
            let mut hotkeys = Vec::new();
            let mut it = at
                .storage()
                .iter(storage::<(u16, u16), AccountId32>("SubtensorModule", "Keys"), (netuid,))
                .await
                .map_err(rpc_err(what("Keys")))?;
            while let Some(kv) = it.next().await {
                let kv = kv.map_err(rpc_err(what("Keys")))?;
                let uid = kv
                    .key()
                    .ok()
                    .and_then(|k| k.part(1).and_then(|p| p.decode_as::<u16>().ok().flatten()));
                let hotkey = kv.value().decode();
                match (uid, hotkey) {
                    (Some(uid), Ok(hotkey)) => hotkeys.push((uid, hotkey)),
                    (_, Err(e)) => tracing::warn!(netuid, error = %e, "Keys entry skipped: bad value"),
                    (None, _) => tracing::warn!(netuid, "Keys entry skipped: unreadable uid"),
                }
            }
            hotkeys.sort_by_key(|(uid, _)| *uid);
            hotkeys.dedup_by_key(|(uid, _)| *uid);

            let incentive: Vec<u16> = at
                .storage()
                .try_fetch(storage::<(u16,), Vec<u16>>("SubtensorModule", "Incentive"), (netuid,))
                .await
                .map_err(rpc_err(what("Incentive")))?
                .map(|v| v.decode())
                .transpose()
                .map_err(|e| decode_err(what("Incentive"), e))?
                .unwrap_or_default();
            // TaoWeight is a fraction of u64::MAX (Subtensor's get_tao_weight). A runtime without the item (old
            // runtimes) has weight 0; a failed read is an error (the window is retried), not a silent 0; a value
            // that does not decode is taken as 0, logged and reported in `defaulted` (the daemon counts it).
            let mut defaulted = Vec::new();
            let has_tao_weight = at
                .metadata_ref()
                .pallet_by_name("SubtensorModule")
                .and_then(|p| p.storage())
                .is_some_and(|s| s.entry_by_name("TaoWeight").is_some());
            let tao_weight = if has_tao_weight {
                let fetched = at
                    .storage()
                    .try_fetch(storage::<(), u64>("SubtensorModule", "TaoWeight"), ())
                    .await
                    .map_err(rpc_err(what("TaoWeight")))?;
                match fetched.map(|v| v.decode()).transpose() {
                    Ok(w) => w.map_or(0.0, |w| w as f64 / u64::MAX as f64),
                    Err(e) => {
                        let reason = e.to_string();
                        tracing::warn!(block = number, field = "TaoWeight", %reason, "chain value unreadable; taken as 0");
                        defaulted.push(DefaultedField {
                            field: "TaoWeight",
                            reason,
                        });
                        0.0
                    }
                }
            } else {
                0.0
            };

            let at = &at;
            let stakes: Vec<Result<u64, ChainError>> =
                futures::stream::iter(hotkeys.clone().into_iter().map(|(uid, hotkey)| async move {
                    let alpha = |net: u16| async move {
                        at.storage()
                            .try_fetch(
                                storage::<(AccountId32, u16), u64>("SubtensorModule", "TotalHotkeyAlpha"),
                                (hotkey, net),
                            )
                            .await
                            .map_err(rpc_err(format!("TotalHotkeyAlpha of uid {uid}")))?
                            .map(|v| v.decode())
                            .transpose()
                            .map_err(|e| decode_err(format!("TotalHotkeyAlpha of uid {uid}"), e))
                            .map(Option::unwrap_or_default)
                    };
                    let subnet = alpha(netuid).await?;
                    let root = if tao_weight > 0.0 && netuid != 0 {
                        alpha(0).await?
                    } else {
                        0
                    };
                    Ok(subnet.saturating_add((root as f64 * tao_weight) as u64))
                }))
                .buffered(self.config.concurrency.max(1))
                .collect()
                .await;

            let mut neurons = Vec::with_capacity(hotkeys.len());
            for ((uid, hotkey), stake) in hotkeys.into_iter().zip(stakes) {
                neurons.push(Neuron {
                    uid,
                    hotkey: hotkey.0,
                    hotkey_ss58: hotkey.to_string(),
                    stake: stake?,
                    incentive: incentive.get(uid as usize).map_or(0.0, |&i| i as f64 / u16::MAX as f64),
                });
            }
            Ok(Metagraph {
                netuid,
                block: number,
                neurons,
                defaulted,
            })
        })
        .await
    }

    async fn commitments(&self, metagraph: &Metagraph) -> Result<Commitments, ChainError> {
        let netuid = metagraph.netuid;
        self.timed(&format!("commitments of subnet {netuid}"), async {
            let at = self.at(Some(metagraph.block)).await?;
            let what = format!("Commitments::CommitmentOf({netuid}) at {}", metagraph.block);
            let mut it = at
                .storage()
                .iter(
                    storage::<(u16, AccountId32), subxt::dynamic::Value>("Commitments", "CommitmentOf"),
                    (netuid,),
                )
                .await
                .map_err(rpc_err(what.clone()))?;
            let mut out = Commitments::default();
            while let Some(kv) = it.next().await {
                let kv = kv.map_err(rpc_err(what.clone()))?;
                // Twox64Concat: the hotkey follows its hash in the key.
                let hotkey = kv
                    .key()
                    .ok()
                    .and_then(|k| k.part(1).and_then(|p| p.decode_as::<AccountId32>().ok().flatten()));
                let Some(hotkey) = hotkey else {
                    let key = hex::encode(kv.key_bytes());
                    tracing::warn!(%key, "commitment skipped: unreadable key");
                    out.skipped.push(crate::SkippedCommitment {
                        hotkey: key,
                        reason: "unreadable storage key".into(),
                    });
                    continue;
                };
                // The value is decoded by hand (never through the metadata), so malformed bytes are a skip.
                out.consider(metagraph, hotkey.0, hotkey.to_string(), kv.value().bytes());
            }
            Ok(out)
        })
        .await
    }
}
