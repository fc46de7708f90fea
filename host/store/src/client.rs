//! One cached `object_store` client per bucket, with explicit timeouts and bounded retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::{Bucket, Endpoint, StoreError};

/// Timeouts and retries of every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (body included): size it for the largest object.
    pub request_timeout: Duration,
    /// Longest pause inside a response body (a stalled stream).
    pub read_timeout: Duration,
    /// Retries of a failed request.
    pub max_retries: usize,
    /// Upper bound on the time spent retrying one request.
    pub retry_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        }
    }
}

/// Clients by bucket. Building one reads no environment variables, so credentials cannot leak between peers.
#[derive(Debug, Default)]
pub struct Clients {
    settings: ClientSettings,
    cache: Mutex<HashMap<Bucket, Arc<dyn ObjectStore>>>,
}

impl Clients {
    /// A cache whose clients use `settings`.
    pub fn new(settings: ClientSettings) -> Self {
        Self {
            settings,
            cache: Mutex::default(),
        }
    }

    /// The client for `bucket` (built on first use).
    pub fn get(&self, bucket: &Bucket) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(bucket) {
            return Ok(c.clone());
        }
        let client = self.build(bucket)?;
        cache.insert(bucket.clone(), client.clone());
        Ok(client)
    }

    /// The bucket's client for a multipart upload that several processes share (part numbers chosen by the
    /// callers; see [`crate::SharedUpload`]). S3-compatible buckets only: a local directory has no such API, and is
    /// refused with a configuration error that says so. Not cached (one per window at most).
    pub fn multipart(&self, bucket: &Bucket) -> Result<Arc<dyn MultipartStore>, StoreError> {
        match &bucket.endpoint {
            Endpoint::Local(root) => Err(StoreError::Config(format!(
                "{}/{}: a local directory cannot take parts from several writers; shards need an S3-compatible bucket",
                root.display(),
                bucket.name
            ))),
            _ => Ok(Arc::new(self.s3(bucket)?)),
        }
    }

    fn build(&self, b: &Bucket) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let err = |e: object_store::Error| StoreError::Config(format!("{b:?}: {e}"));
        if let Endpoint::Local(root) = &b.endpoint {
            let dir = root.join(&b.name);
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::Config(format!("{}: {e}", dir.display())))?;
            return Ok(Arc::new(
                LocalFileSystem::new_with_prefix(&dir)
                    .map_err(err)?
                    .with_automatic_cleanup(true),
            ));
        }
        Ok(Arc::new(self.s3(b)?))
    }

    fn s3(&self, b: &Bucket) -> Result<AmazonS3, StoreError> {
        let err = |e: object_store::Error| StoreError::Config(format!("{b:?}: {e}"));
        let url = match &b.endpoint {
            Endpoint::Local(_) => return Err(StoreError::Config(format!("{b:?}: not an S3 endpoint"))),
            Endpoint::R2 { account } => format!("https://{account}.r2.cloudflarestorage.com"),
            Endpoint::Url(u) => u.clone(),
        };
        let s = &self.settings;
        AmazonS3Builder::new()
            .with_endpoint(&url)
            .with_region("auto")
            .with_bucket_name(&b.name)
            .with_access_key_id(&b.access_key_id)
            .with_secret_access_key(&b.secret)
            .with_client_options(
                // (allow_http lives in the client options, which this call replaces as a whole)
                ClientOptions::new()
                    .with_allow_http(url.starts_with("http://"))
                    .with_connect_timeout(s.connect_timeout)
                    .with_timeout(s.request_timeout)
                    .with_read_timeout(s.read_timeout),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: s.max_retries,
                retry_timeout: s.retry_timeout,
            })
            .build()
            .map_err(err)
    }
}
