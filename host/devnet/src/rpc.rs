//! The legacy JSON-RPC methods subxt's `LegacyBackend` calls (`../shared/notes/chain.md` §2.1–2.2), answered from
//! the devnet's state.

use std::sync::Arc;

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::{PendingSubscriptionSink, RpcModule, SubscriptionMessage};
use parity_scale_codec::{Decode, Encode};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::Shared;
use crate::state::{Block, hex0x};

/// Subtensor's metadata (V16, spec 365) from `bittensor-rs` 0.1.1 (MIT, see `metadata/LICENSE-bittensor-rs`).
pub const METADATA: &[u8] = include_bytes!("../metadata/finney.scale");
/// The runtime the metadata describes.
pub const SPEC_NAME: &str = "node-subtensor";
/// Its spec version.
pub const SPEC_VERSION: u32 = 365;

type RpcResult<T> = Result<T, ErrorObjectOwned>;

fn invalid(msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(-32602, msg.into(), None::<()>)
}

fn unknown_block(what: &str) -> ErrorObjectOwned {
    // Substrate answers state queries at an unknown or pruned block with an error like this one.
    ErrorObjectOwned::owned(
        4003,
        format!("Client error: UnknownBlock: {what} (not produced or pruned)"),
        None::<()>,
    )
}

fn bytes_param(v: &Value, name: &str) -> RpcResult<Vec<u8>> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(format!("{name}: expected a 0x-hex string")))?;
    hex::decode(s.strip_prefix("0x").unwrap_or(s)).map_err(|e| invalid(format!("{name}: {e}")))
}

fn hash_param(v: &Value) -> RpcResult<[u8; 32]> {
    bytes_param(v, "hash")?
        .try_into()
        .map_err(|_| invalid("hash: expected 32 bytes"))
}

fn number_param(v: &Value) -> RpcResult<u64> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| invalid("block number: not a u64")),
        Value::String(s) => {
            u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| invalid(format!("block number {s:?}: {e}")))
        }
        _ => Err(invalid("block number: expected a number or hex string")),
    }
}

fn params_vec(params: &Params<'_>) -> RpcResult<Vec<Value>> {
    if params.is_object() {
        return Err(invalid("named parameters are not supported by the devnet"));
    }
    Ok(params.parse::<Option<Vec<Value>>>()?.unwrap_or_default())
}

/// The block named by an optional hash parameter (absent or null: the best block).
fn block_at(shared: &Shared, at: Option<&Value>) -> RpcResult<Block> {
    let state = shared.lock();
    match at {
        None | Some(Value::Null) => Ok(state.best().clone()),
        Some(v) => {
            let hash = hash_param(v)?;
            state
                .by_hash(&hash)
                .cloned()
                .ok_or_else(|| unknown_block(&hex0x(&hash)))
        }
    }
}

fn runtime_version_scale() -> Vec<u8> {
    (
        SPEC_NAME.to_string(),
        SPEC_NAME.to_string(),
        1u32,
        SPEC_VERSION,
        1u32,
        Vec::<([u8; 8], u32)>::new(),
        1u32,
        1u8,
    )
        .encode()
}

fn state_call(method: &str, mut args: &[u8]) -> RpcResult<Vec<u8>> {
    match method {
        "Core_version" => Ok(runtime_version_scale()),
        "Metadata_metadata_versions" => Ok(vec![16u32].encode()),
        "Metadata_metadata_at_version" => {
            let version = u32::decode(&mut args).map_err(|e| invalid(format!("version: {e}")))?;
            Ok((version == 16).then(|| METADATA.to_vec()).encode())
        }
        "Metadata_metadata" => Ok(METADATA.to_vec().encode()),
        other => Err(ErrorObjectOwned::owned(
            -32000,
            format!("the devnet runs no runtime: {other} is not served (read storage instead)"),
            None::<()>,
        )),
    }
}

async fn forward_heads(pending: PendingSubscriptionSink, shared: Arc<Shared>) -> SubscriptionResult {
    let mut heads = shared.heads.subscribe();
    let current = shared.lock().best().header_json();
    let sink = pending.accept().await?;
    // Substrate sends the current head as soon as the subscription starts.
    sink.send(SubscriptionMessage::from(serde_json::value::to_raw_value(&current)?))
        .await?;
    loop {
        tokio::select! {
            _ = sink.closed() => return Ok(()),
            next = heads.recv() => match next {
                Ok(header) => sink.send(SubscriptionMessage::from(serde_json::value::to_raw_value(&*header)?)).await?,
                // A slow reader misses heads, as with a real node; the next one still arrives.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// Builds the RPC module.
pub(crate) fn module(shared: Arc<Shared>) -> RpcModule<Arc<Shared>> {
    let mut m = RpcModule::new(shared);
    let reg = "method names are distinct";

    m.register_method("chain_getBlockHash", |p, s, _| -> RpcResult<Value> {
        let p = params_vec(&p)?;
        let state = s.lock();
        Ok(match p.first() {
            None | Some(Value::Null) => json!(hex0x(&state.best().hash)),
            Some(v) => state
                .by_number(number_param(v)?)
                .map_or(Value::Null, |b| json!(hex0x(&b.hash))),
        })
    })
    .expect(reg);
    m.register_method("chain_getHeader", |p, s, _| -> RpcResult<Value> {
        let p = params_vec(&p)?;
        Ok(match block_at(s, p.first()) {
            Ok(b) => b.header_json(),
            Err(_) => Value::Null,
        })
    })
    .expect(reg);
    m.register_method("chain_getBlock", |p, s, _| -> RpcResult<Value> {
        let p = params_vec(&p)?;
        Ok(match block_at(s, p.first()) {
            Ok(b) => json!({ "block": { "header": b.header_json(), "extrinsics": [] }, "justifications": null }),
            Err(_) => Value::Null,
        })
    })
    .expect(reg);
    m.register_method("chain_getFinalizedHead", |_, s, _| -> RpcResult<Value> {
        // Every devnet block is final at once.
        Ok(json!(hex0x(&s.lock().best().hash)))
    })
    .expect(reg);
    m.register_method("state_getStorage", |p, s, _| -> RpcResult<Value> {
        let p = params_vec(&p)?;
        let key = bytes_param(p.first().ok_or_else(|| invalid("missing key"))?, "key")?;
        let block = block_at(s, p.get(1))?;
        Ok(block.get(&key).map_or(Value::Null, |v| json!(hex0x(&v))))
    })
    .expect(reg);
    m.register_method("state_getKeysPaged", |p, s, _| -> RpcResult<Value> {
        let p = params_vec(&p)?;
        let prefix = bytes_param(p.first().ok_or_else(|| invalid("missing prefix"))?, "prefix")?;
        let count = p
            .get(1)
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("count: expected a number"))?;
        // Substrate caps a page at 1000 keys.
        let count = count.min(1000) as usize;
        let start = match p.get(2) {
            None | Some(Value::Null) => None,
            Some(v) => Some(bytes_param(v, "start_key")?),
        };
        let block = block_at(s, p.get(3))?;
        let keys = block.keys_paged(&prefix, count, start.as_deref());
        Ok(json!(keys.iter().map(|k| hex0x(k)).collect::<Vec<_>>()))
    })
    .expect(reg);
    m.register_method("state_queryStorageAt", |p, s, _| -> RpcResult<Value> {
        let p = params_vec(&p)?;
        let keys = p
            .first()
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("keys: expected an array"))?;
        if keys.len() > 1000 {
            return Err(invalid("at most 1000 keys per query"));
        }
        let block = block_at(s, p.get(1))?;
        let mut changes = Vec::with_capacity(keys.len());
        for k in keys {
            let key = bytes_param(k, "key")?;
            let value = block.get(&key).map_or(Value::Null, |v| json!(hex0x(&v)));
            changes.push(json!([hex0x(&key), value]));
        }
        Ok(json!([{ "block": hex0x(&block.hash), "changes": changes }]))
    })
    .expect(reg);
    m.register_method("state_call", |p, s, _| -> RpcResult<Value> {
        let p = params_vec(&p)?;
        let method = p
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("method: expected a string"))?;
        let args = bytes_param(p.get(1).unwrap_or(&json!("0x")), "data")?;
        block_at(s, p.get(2))?;
        Ok(json!(hex0x(&state_call(method, &args)?)))
    })
    .expect(reg);
    m.register_method("state_getRuntimeVersion", |_, _, _| -> RpcResult<Value> {
        Ok(json!({
            "specName": SPEC_NAME, "implName": SPEC_NAME, "authoringVersion": 1, "specVersion": SPEC_VERSION,
            "implVersion": 1, "apis": [], "transactionVersion": 1, "stateVersion": 1,
        }))
    })
    .expect(reg);
    m.register_method("state_getMetadata", |_, _, _| -> RpcResult<Value> {
        Ok(json!(hex0x(METADATA)))
    })
    .expect(reg);
    m.register_method("system_chain", |_, _, _| -> RpcResult<&str> { Ok("Subtensor devnet") })
        .expect(reg);
    m.register_method("system_name", |_, _, _| -> RpcResult<&str> { Ok("aggregator-devnet") })
        .expect(reg);
    m.register_method("system_version", |_, _, _| -> RpcResult<&str> {
        Ok(env!("CARGO_PKG_VERSION"))
    })
    .expect(reg);
    m.register_method("system_health", |_, _, _| -> RpcResult<Value> {
        Ok(json!({ "peers": 0, "isSyncing": false, "shouldHavePeers": false }))
    })
    .expect(reg);
    m.register_method("system_properties", |_, _, _| -> RpcResult<Value> {
        Ok(json!({ "ss58Format": 42, "tokenDecimals": 9, "tokenSymbol": "TAO" }))
    })
    .expect(reg);

    for (sub, notif, unsub) in [
        ("chain_subscribeNewHeads", "chain_newHead", "chain_unsubscribeNewHeads"),
        (
            "chain_subscribeFinalizedHeads",
            "chain_finalizedHead",
            "chain_unsubscribeFinalizedHeads",
        ),
        ("chain_subscribeAllHeads", "chain_allHead", "chain_unsubscribeAllHeads"),
    ] {
        m.register_subscription(sub, notif, unsub, |_, pending, s, _| {
            forward_heads(pending, Arc::clone(&s))
        })
        .expect(reg);
    }
    let names: Vec<&str> = m.method_names().collect();
    let mut names: Vec<String> = names.into_iter().map(str::to_string).collect();
    names.sort();
    m.register_method("rpc_methods", move |_, _, _| -> RpcResult<Value> {
        Ok(json!({ "version": 1, "methods": names }))
    })
    .expect(reg);
    m
}
