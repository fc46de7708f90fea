//! Where objects live: a peer's bucket from its on-chain commitment, the server's own bucket from configuration.

use std::fmt;
use std::path::PathBuf;

use crate::StoreError;

/// The endpoint of a bucket.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Cloudflare R2: `https://{account}.r2.cloudflarestorage.com`.
    R2 {
        /// The R2 account id.
        account: String,
    },
    /// Any S3-compatible server (self-hosting, tests), e.g. `http://127.0.0.1:18333`.
    Url(String),
    /// A local directory holding one sub-directory per bucket (the embedded default; no credentials).
    Local(PathBuf),
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::R2 { account } => write!(f, "https://{account}.r2.cloudflarestorage.com"),
            Endpoint::Url(u) => write!(f, "{u}"),
            Endpoint::Local(p) => write!(f, "file://{}", p.display()),
        }
    }
}

/// Parses what [`Endpoint`]'s `Display` writes, as operators type it: `r2:ACCOUNT_ID`, `http(s)://HOST:PORT`, or a
/// directory (`file:///abs/path` or a path). `HOST:PORT` without a scheme is refused (a forgotten `http://`, not a
/// directory named so).
impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        let unsupported = |what: &str| {
            Err(format!(
                "{s:?}: {what}; use http(s)://HOST:PORT for an S3-compatible server, r2:ACCOUNT_ID for Cloudflare R2, \
                 or a directory (file:///path or a path)"
            ))
        };
        if let Some(account) = s.strip_prefix("r2:") {
            if account.is_empty() || !account.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("{s:?}: an R2 account id is letters and digits"));
            }
            return Ok(Endpoint::R2 {
                account: account.to_string(),
            });
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            return match scheme {
                "http" | "https" if !rest.trim_end_matches('/').is_empty() => {
                    Ok(Endpoint::Url(s.trim_end_matches('/').to_string()))
                }
                "http" | "https" => unsupported("no host"),
                "file" if rest.starts_with('/') => Ok(Endpoint::Local(PathBuf::from(rest))),
                "file" => unsupported("a file:// URL needs an absolute path"),
                other => unsupported(&format!("the scheme {other}:// is not supported")),
            };
        }
        if s.is_empty() {
            return unsupported("empty");
        }
        // `minio:9000`, `localhost:9000/x`: a forgotten http://, not a directory named so.
        let head = s.split('/').next().unwrap_or(s);
        if let Some((host, port)) = head.split_once(':')
            && !host.is_empty()
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            return unsupported("this looks like HOST:PORT without a scheme");
        }
        Ok(Endpoint::Local(PathBuf::from(s)))
    }
}

/// `r2:ACCOUNT_ID`, the URL, or `file://PATH`: the form [`Endpoint`]'s `FromStr` reads back (window receipts record
/// endpoints so).
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::R2 { account } => write!(f, "r2:{account}"),
            Endpoint::Url(u) => write!(f, "{u}"),
            Endpoint::Local(p) if p.is_absolute() => write!(f, "file://{}", p.display()),
            Endpoint::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A bucket and the credentials to use it. The secret never appears in `Debug` output or errors.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// Endpoint.
    pub endpoint: Endpoint,
    /// Bucket name.
    pub name: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret: String,
}

/// `endpoint/name (key KEY_ID)`: the secret never appears.
impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} (key {})", self.endpoint, self.name, self.access_key_id)
    }
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{} (key {})", self.endpoint, self.name, self.access_key_id)
    }
}

/// Length of a Templar bucket commitment.
pub const COMMITMENT_LEN: usize = 128;

impl Bucket {
    /// Templar's commitment rule (spec §5.3): exactly 128 printable ASCII characters; `name = account id = s[0..32]`,
    /// key id `s[32..64]`, secret `s[64..128]`, on R2.
    pub fn from_commitment(s: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Commitment(reason.to_string());
        if s.len() != COMMITMENT_LEN {
            return Err(bad(&format!("{} bytes, expected {COMMITMENT_LEN}", s.len())));
        }
        // Templar slices characters; with printable ASCII only, bytes and characters coincide (and no `/` can
        // turn a bucket name into a path).
        if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
            return Err(bad("contains a character outside printable ASCII (or a '/')"));
        }
        let account = s[0..32].to_string();
        Ok(Self {
            endpoint: Endpoint::R2 {
                account: account.clone(),
            },
            name: account,
            access_key_id: s[32..64].to_string(),
            secret: s[64..128].to_string(),
        })
    }

    /// The same bucket and credentials on another endpoint (self-hosted networks, the simulator, tests).
    pub fn at(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// A local-directory bucket.
    pub fn local(root: impl Into<PathBuf>, name: &str) -> Self {
        Self {
            endpoint: Endpoint::Local(root.into()),
            name: name.to_string(),
            access_key_id: String::new(),
            secret: String::new(),
        }
    }

    /// The server's own bucket from Templar's environment names: `R2_AGGREGATOR_ACCOUNT_ID`,
    /// `R2_AGGREGATOR_BUCKET_NAME`, `R2_AGGREGATOR_WRITE_ACCESS_KEY_ID`, `R2_AGGREGATOR_WRITE_SECRET_ACCESS_KEY`
    /// (`get(name)` reads one; pass `std::env::var` in production).
    pub fn aggregator_from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, StoreError> {
        let need = |k: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| StoreError::Config(format!("{k} is not set")))
        };
        let account = need("R2_AGGREGATOR_ACCOUNT_ID")?;
        Ok(Self {
            endpoint: Endpoint::R2 { account },
            name: need("R2_AGGREGATOR_BUCKET_NAME")?,
            access_key_id: need("R2_AGGREGATOR_WRITE_ACCESS_KEY_ID")?,
            secret: need("R2_AGGREGATOR_WRITE_SECRET_ACCESS_KEY")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commitment_rule() {
        let s = format!("{}{}{}", "a".repeat(32), "K".repeat(32), "s".repeat(64));
        let b = Bucket::from_commitment(&s).unwrap();
        assert_eq!(
            (b.name.as_str(), b.access_key_id.len(), b.secret.len()),
            ("a".repeat(32).as_str(), 32, 64)
        );
        assert_eq!(
            b.endpoint,
            Endpoint::R2 {
                account: "a".repeat(32)
            }
        );
        assert!(!format!("{b:?}").contains("sss"), "the secret stays out of Debug");
        assert!(Bucket::from_commitment(&s[..127]).is_err());
        assert!(Bucket::from_commitment(&format!("{}é", &s[..126])).is_err());
        let env = |k: &str| Some(format!("v-{k}"));
        assert_eq!(
            Bucket::aggregator_from_env(env).unwrap().name,
            "v-R2_AGGREGATOR_BUCKET_NAME"
        );
        assert!(Bucket::aggregator_from_env(|_| None).is_err());
    }

    #[test]
    fn endpoints_read_back_what_they_print() {
        for e in [
            Endpoint::R2 {
                account: "abc123".into(),
            },
            Endpoint::Url("http://127.0.0.1:8333".into()),
            Endpoint::Local(PathBuf::from("/tmp/store")),
            Endpoint::Local(PathBuf::from("rel/store")),
        ] {
            assert_eq!(e.to_string().parse::<Endpoint>(), Ok(e.clone()), "{e}");
        }
        assert!("minio:9000".parse::<Endpoint>().is_err());
        assert!("s3://x".parse::<Endpoint>().is_err());
    }
}
