//! Why a selected peer's gradient was not used: one typed value from the gather to the window step, the report, the
//! metrics, the simulator and the tests (nobody parses it back from text).

use std::fmt;

/// Why a selected peer was skipped in a window. Its [`kind`](SkipReason::kind) is the bounded label for metrics and
/// tables; [`Display`](fmt::Display) adds the detail for logs.
/// Its serde form (a shard's judgement of the peers) is tagged by `kind`, with the variant's fields beside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SkipReason {
    /// No object by the deadline (or by one try after the upper bound).
    Missing,
    /// Uploaded before the lower bound.
    TooEarly {
        /// `LastModified`, in ms since the Unix epoch.
        last_modified_ms: u64,
    },
    /// Uploaded after the upper bound.
    TooLate {
        /// `LastModified`, in ms since the Unix epoch.
        last_modified_ms: u64,
    },
    /// Larger than the model's gradient can be (by HEAD, the GET's declared size or the bytes received).
    TooLarge {
        /// Object size (or bytes received so far).
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// Not a valid gradient for the model; `detail` is the codec's error, which names the record, key, parameter or
    /// byte offset.
    Malformed {
        /// What was wrong.
        detail: String,
    },
    /// The peer's storage did not answer within the gather timeout.
    Timeout,
    /// The peer's storage refused or failed (credentials, network, …).
    StorageError {
        /// The storage client's error.
        detail: String,
    },
    /// The peer has no valid bucket commitment.
    NoBucket,
}

/// The kind of a [`SkipReason`], without its detail: the label set of metrics and tables is this closed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipKind {
    /// [`SkipReason::Missing`].
    Missing,
    /// [`SkipReason::TooEarly`].
    TooEarly,
    /// [`SkipReason::TooLate`].
    TooLate,
    /// [`SkipReason::TooLarge`].
    TooLarge,
    /// [`SkipReason::Malformed`].
    Malformed,
    /// [`SkipReason::Timeout`].
    Timeout,
    /// [`SkipReason::StorageError`].
    StorageError,
    /// [`SkipReason::NoBucket`].
    NoBucket,
}

impl SkipKind {
    /// Every kind, in declaration order.
    pub const ALL: [SkipKind; 8] = [
        SkipKind::Missing,
        SkipKind::TooEarly,
        SkipKind::TooLate,
        SkipKind::TooLarge,
        SkipKind::Malformed,
        SkipKind::Timeout,
        SkipKind::StorageError,
        SkipKind::NoBucket,
    ];

    /// The label used in metrics (`reason="…"`), tables and logs: `missing`, `too-early`, `too-late`, `too-large`,
    /// `malformed`, `timeout`, `storage-error`, `no-bucket`.
    pub fn label(self) -> &'static str {
        match self {
            SkipKind::Missing => "missing",
            SkipKind::TooEarly => "too-early",
            SkipKind::TooLate => "too-late",
            SkipKind::TooLarge => "too-large",
            SkipKind::Malformed => "malformed",
            SkipKind::Timeout => "timeout",
            SkipKind::StorageError => "storage-error",
            SkipKind::NoBucket => "no-bucket",
        }
    }
}

impl fmt::Display for SkipKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl SkipReason {
    /// The reason's kind.
    pub fn kind(&self) -> SkipKind {
        match self {
            SkipReason::Missing => SkipKind::Missing,
            SkipReason::TooEarly { .. } => SkipKind::TooEarly,
            SkipReason::TooLate { .. } => SkipKind::TooLate,
            SkipReason::TooLarge { .. } => SkipKind::TooLarge,
            SkipReason::Malformed { .. } => SkipKind::Malformed,
            SkipReason::Timeout => SkipKind::Timeout,
            SkipReason::StorageError { .. } => SkipKind::StorageError,
            SkipReason::NoBucket => SkipKind::NoBucket,
        }
    }
}

impl fmt::Display for SkipReason {
    /// `kind` or `kind: detail` (the format logs and `aggregator aggregate` print).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind();
        match self {
            SkipReason::TooEarly { last_modified_ms } | SkipReason::TooLate { last_modified_ms } => {
                write!(f, "{kind}: uploaded at {last_modified_ms} ms")
            }
            SkipReason::TooLarge { size, cap } => write!(f, "{kind}: {size} bytes, cap {cap}"),
            SkipReason::Malformed { detail } | SkipReason::StorageError { detail } => write!(f, "{kind}: {detail}"),
            SkipReason::Missing | SkipReason::Timeout | SkipReason::NoBucket => write!(f, "{kind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_starts_with_the_kind() {
        let reasons = [
            SkipReason::Missing,
            SkipReason::TooEarly { last_modified_ms: 5 },
            SkipReason::TooLate { last_modified_ms: 6 },
            SkipReason::TooLarge { size: 9, cap: 8 },
            SkipReason::Malformed { detail: "x: y".into() },
            SkipReason::Timeout,
            SkipReason::StorageError {
                detail: "refused".into(),
            },
            SkipReason::NoBucket,
        ];
        let kinds: Vec<SkipKind> = reasons.iter().map(SkipReason::kind).collect();
        assert_eq!(kinds, SkipKind::ALL);
        for r in &reasons {
            assert!(r.to_string().starts_with(r.kind().label()), "{r}");
        }
        assert_eq!(reasons[3].to_string(), "too-large: 9 bytes, cap 8");
    }
}
