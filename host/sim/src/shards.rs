//! Shards 1.. of the simulated aggregator (`SimOptions::shards`): threads with their own runtime, or processes of
//! the `aggregator` binary, each serving its part of every window the daemon (shard 0) plans; and the outage that
//! stops one mid-window.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregator_daemon::DaemonConfig;
use aggregator_daemon::window::shard::{AttemptKeys, CURRENT, Current};
use aggregator_kernels::Backend;
use aggregator_store::{Bucket, ClientSettings, Clients};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use tokio::sync::watch;

use crate::{Network, SimError, SimOptions, sim_err};

/// One running shard.
enum Worker {
    /// A thread running `serve_shard` until its stop signal.
    Thread(std::thread::JoinHandle<()>, watch::Sender<bool>),
    /// A process (`aggregator run`).
    Process(Child),
}

/// Shards 1.. of the simulated aggregator.
pub(crate) struct Shards {
    config: DaemonConfig,
    backend: Arc<dyn Backend>,
    output: Bucket,
    exe: Option<PathBuf>,
    dir: PathBuf,
    workers: Vec<Option<Worker>>,
}

impl Shards {
    /// Starts shards `1..options.shards` of `config` (the daemon's, which is shard 0).
    pub(crate) fn start(network: &Network, config: &DaemonConfig, options: &SimOptions) -> Result<Self, SimError> {
        let mut shards = Self {
            config: config.clone(),
            backend: options.backend.clone(),
            output: network.output.clone(),
            exe: options.shard_exe.clone(),
            dir: network.data_dir.clone(),
            workers: Vec::new(),
        };
        for i in 1..options.shards as usize {
            let w = shards.spawn(i)?;
            shards.workers.push(Some(w));
        }
        Ok(shards)
    }

    fn spawn(&self, index: usize) -> Result<Worker, SimError> {
        let mut config = self.config.clone();
        config.shard_index = Some(index as u32);
        config.state_dir = self.dir.join(format!("state-shard-{index}"));
        config.metrics = String::new();
        match &self.exe {
            Some(exe) => {
                let file = self.dir.join(format!("shard-{index}.toml"));
                std::fs::write(&file, config.to_toml()).map_err(sim_err)?;
                let log = std::fs::File::create(self.dir.join(format!("shard-{index}.log"))).map_err(sim_err)?;
                let child = Command::new(exe)
                    .arg("run")
                    .arg("--config")
                    .arg(&file)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().map_err(sim_err)?)
                    .stderr(log)
                    .spawn()
                    .map_err(|e| sim_err(format!("starting shard {index} ({}): {e}", exe.display())))?;
                tracing::info!(target: "sim", shard = index, pid = child.id(), "shard process started");
                Ok(Worker::Process(child))
            }
            None => {
                let (tx, rx) = watch::channel(false);
                let (backend, output) = (self.backend.clone(), self.output.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("shard-{index}"))
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => return tracing::error!(shard = index, error = %e, "shard runtime"),
                        };
                        let served = rt.block_on(aggregator_daemon::window::shard::serve_shard(
                            &config, backend, &output, index, rx,
                        ));
                        if let Err(e) = served {
                            tracing::error!(shard = index, error = %e, "shard stopped");
                        }
                    })
                    .map_err(sim_err)?;
                Ok(Worker::Thread(handle, tx))
            }
        }
    }

    /// Stops shard `index` at once (a thread's current work is dropped; a process is killed).
    fn stop(&mut self, index: usize) {
        let Some(w) = self.workers.get_mut(index - 1).and_then(Option::take) else {
            return;
        };
        match w {
            Worker::Thread(handle, tx) => {
                let _ = tx.send(true);
                let _ = handle.join();
            }
            Worker::Process(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        tracing::info!(target: "sim", shard = index, "shard stopped");
    }

    /// Starts shard `index` again.
    fn restart(&mut self, index: usize) -> Result<(), SimError> {
        let w = self.spawn(index)?;
        if let Some(slot) = self.workers.get_mut(index - 1) {
            *slot = Some(w);
        }
        tracing::info!(target: "sim", shard = index, "shard started again");
        Ok(())
    }

    /// Stops every shard.
    pub(crate) fn stop_all(&mut self) {
        for i in 1..=self.workers.len() {
            self.stop(i);
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Stops `shard` when the coordinator starts window `window` (its first attempt), and starts it again once that
/// attempt is aborted (or after a minute, whichever comes first).
pub(crate) async fn outage(shards: Arc<Mutex<Shards>>, output: Bucket, window: u64, shard: usize) {
    let clients = Clients::new(ClientSettings::default());
    let Ok(store) = clients.get(&output) else { return };
    let current = loop {
        if let Ok(got) = store.get(&ObjectPath::from(CURRENT)).await
            && let Ok(bytes) = got.bytes().await
            && let Ok(c) = serde_json::from_slice::<Current>(&bytes)
            && c.window >= window
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    {
        let mut s = shards.lock().unwrap_or_else(|p| p.into_inner());
        tracing::info!(target: "sim", shard, window = current.window, attempt = current.attempt, "outage: stopping a shard mid-window");
        s.stop(shard);
    }
    let aborted = ObjectPath::from(AttemptKeys::new(current.window, current.attempt).aborted());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if store.head(&aborted).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut s = shards.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = s.restart(shard) {
        tracing::error!(target: "sim", shard, error = %e, "outage: the shard did not start again");
    }
}

/// Once shard 0 has judged window `window`'s first round (its first attempt), uploads another valid file in `uid`'s
/// place: a file replaced mid-window. The file it replaces is kept as `replaced-{window}-{uid}.pt` in `dir`.
pub(crate) async fn replace(
    model: Option<Arc<aggregator_model::ModelSpec>>,
    bucket: Option<Bucket>,
    output: Bucket,
    (uid, window): (u16, u64),
    dir: PathBuf,
) {
    let (Some(model), Some(bucket)) = (model, bucket) else {
        return tracing::error!(target: "sim", uid, "replace: no model or bucket");
    };
    let clients = Clients::new(ClientSettings::default());
    let (Ok(out), Ok(peer)) = (clients.get(&output), clients.get(&bucket)) else {
        return;
    };
    let judged = ObjectPath::from(format!("shards/{window}/0/judge-0-0.json"));
    let started = Instant::now();
    while out.head(&judged).await.is_err() {
        if started.elapsed() > Duration::from_secs(120) {
            return tracing::error!(target: "sim", window, "replace: the window was never judged");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = aggregator_kernels::Cpu::new();
    let bytes = match crate::miner_gradient(&model, &cpu, 0x5eed ^ uid as u64, window) {
        Ok(b) => b,
        Err(e) => return tracing::error!(target: "sim", uid, error = %e, "replace: no gradient"),
    };
    let key = aggregator_store::keys::gradient(window, uid, crate::VERSION);
    let old = match peer.get(&ObjectPath::from(key.as_str())).await {
        Ok(got) => got.bytes().await.ok(),
        Err(_) => None,
    };
    if let Some(old) = old
        && let Err(e) = std::fs::write(dir.join(format!("replaced-{window}-{uid}.pt")), &old)
    {
        tracing::error!(target: "sim", uid, error = %e, "replace: the old file not kept");
    }
    match aggregator_store::put(
        peer.as_ref(),
        &key,
        bytes.into(),
        &aggregator_store::PutOptions::default(),
    )
    .await
    {
        Ok(()) => tracing::info!(target: "sim", uid, window, "replace: the miner's file replaced mid-window"),
        Err(e) => tracing::error!(target: "sim", uid, error = %e, "replace: upload failed"),
    }
}
