//! Persisted state: the last processed window and the peer-selection policy's state, written atomically (temporary
//! file, fsync, rename), so a crash leaves either the old or the new state, never a torn one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DaemonError;

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// The newest window whose processing finished (stored, or nothing to store).
    pub last_processed: Option<u64>,
    /// The peers in use after that window.
    pub current_peers: Vec<u16>,
    /// The peer-selection policy's opaque state, hex.
    pub selection_state: String,
    /// The peer-selection shadow candidate's own state, hex (empty without one).
    #[serde(default)]
    pub shadow_selection_state: String,
    /// The contribution-weighting policy's opaque state, hex (empty until it returns one).
    #[serde(default)]
    pub weighting_state: String,
    /// Windows that failed and wait for a retry, oldest first (redone while inside `max_backfill` of the newest
    /// closed window).
    #[serde(default)]
    pub retry: Vec<u64>,
}

/// Most windows a state file may list for retry (far above any `max_backfill` in use).
pub const MAX_RETRY_WINDOWS: usize = 10_000;

/// The state file in a directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

const MAX_STATE_FILE: u64 = 1 << 20;

impl StateFile {
    /// `dir/state.json` (the directory is created).
    pub fn open(dir: &Path) -> Result<Self, DaemonError> {
        std::fs::create_dir_all(dir).map_err(|e| DaemonError::State(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            path: dir.join("state.json"),
        })
    }

    /// The saved state, or the default if there is none. A corrupt file is an error (never silently reset: that
    /// would re-process or skip windows).
    pub fn load(&self) -> Result<PersistedState, DaemonError> {
        let err = |m: String| DaemonError::State(format!("{}: {m}", self.path.display()));
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PersistedState::default()),
            Err(e) => return Err(err(e.to_string())),
            Ok(m) if m.len() > MAX_STATE_FILE => return Err(err(format!("{} bytes is too large", m.len()))),
            Ok(_) => {}
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| err(e.to_string()))?;
        let state: PersistedState = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        hex::decode(&state.selection_state).map_err(|e| err(format!("selection_state: {e}")))?;
        hex::decode(&state.shadow_selection_state).map_err(|e| err(format!("shadow_selection_state: {e}")))?;
        hex::decode(&state.weighting_state).map_err(|e| err(format!("weighting_state: {e}")))?;
        if state.retry.len() > MAX_RETRY_WINDOWS {
            return Err(err(format!(
                "retry: {} windows (at most {MAX_RETRY_WINDOWS})",
                state.retry.len()
            )));
        }
        if !state.retry.is_sorted_by(|a, b| a < b) {
            return Err(err("retry: windows must be increasing".into()));
        }
        Ok(state)
    }

    /// Saves atomically.
    pub fn save(&self, state: &PersistedState) -> Result<(), DaemonError> {
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| DaemonError::State(format!("{}: {e}", self.path.display())))?;
        write_atomically(&self.path, text.as_bytes())
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a temporary file, fsync, rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DaemonError> {
    use std::io::Write;
    let err = |m: String| DaemonError::State(format!("{}: {m}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    f.write_all(bytes).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Receipts not yet in the output bucket, in `state_dir/pending-receipts/`: each is saved before its aggregate's put
/// and removed once it is stored, so that neither a failed receipt put nor a crash between the two writes loses it
/// (the daemon stores it, or drops it when its aggregate was never stored, before its next window).
#[derive(Debug, Clone)]
pub struct PendingReceipts {
    dir: PathBuf,
}

impl PendingReceipts {
    /// `dir/pending-receipts` (created).
    pub fn open(state_dir: &Path) -> Result<Self, DaemonError> {
        let dir = state_dir.join("pending-receipts");
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::State(format!("{}: {e}", dir.display())))?;
        Ok(Self { dir })
    }

    fn path(&self, window: u64) -> PathBuf {
        self.dir.join(format!("receipt-{window}.json"))
    }

    /// Saves (or replaces) window `window`'s receipt.
    pub fn save(&self, window: u64, json: &[u8]) -> Result<(), DaemonError> {
        write_atomically(&self.path(window), json)
    }

    /// Removes window `window`'s receipt (absent is fine).
    pub fn remove(&self, window: u64) {
        let _ = std::fs::remove_file(self.path(window));
    }

    /// Whether window `window` has a pending receipt.
    pub fn contains(&self, window: u64) -> bool {
        self.path(window).is_file()
    }

    /// The pending windows, oldest first, with their files.
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let w = name
                    .to_str()?
                    .strip_prefix("receipt-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((w, e.path()))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_an_error() {
        let dir = std::env::temp_dir().join(format!("daemon-state-{}", std::process::id()));
        let f = StateFile::open(&dir).unwrap();
        assert_eq!(f.load().unwrap(), PersistedState::default());
        let s = PersistedState {
            last_processed: Some(41),
            current_peers: vec![1, 2],
            selection_state: "01ff".into(),
            shadow_selection_state: String::new(),
            weighting_state: "02".into(),
            retry: vec![38, 40],
        };
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap(), s);
        std::fs::write(dir.join("state.json"), "{\"last_processed\": ").unwrap();
        assert!(f.load().unwrap_err().to_string().contains("state.json"));
        // A state file from before the retry queue still loads.
        std::fs::write(
            dir.join("state.json"),
            r#"{"last_processed": 7, "current_peers": [], "selection_state": ""}"#,
        )
        .unwrap();
        assert_eq!(f.load().unwrap().last_processed, Some(7));
        for (text, needle) in [
            (
                r#"{"last_processed": 7, "current_peers": [], "selection_state": "zz"}"#,
                "selection_state",
            ),
            (
                r#"{"last_processed": 7, "current_peers": [], "selection_state": "", "retry": [5, 5]}"#,
                "retry",
            ),
        ] {
            std::fs::write(dir.join("state.json"), text).unwrap();
            let e = f.load().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
