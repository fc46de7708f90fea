//! The JSON objects of the leader's bucket (spec §1.4.6): peer lists and the start window.

use std::io;

use serde::{Deserialize, Serialize};

use crate::CodecError;

/// Largest JSON object accepted (a peer list with 256 weights is about 6 KB).
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// `peers_{N}_v{V}.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerList {
    /// Selected uids.
    pub peers: Vec<u16>,
    /// Per-uid weights (dropped after 0.2.73).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    /// Whether this was the validator's first selection.
    pub initial_selection: bool,
    /// The window the list was selected at.
    pub sync_window: i64,
    /// The first window in which the list applies.
    pub first_effective_window: i64,
}

/// `start_window_v{V}.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartWindow {
    /// The network's first window.
    pub start_window: i64,
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &'static str) -> Result<T, CodecError> {
    if bytes.len() > MAX_JSON_BYTES {
        return Err(CodecError::Limit {
            what,
            actual: bytes.len() as u64,
            limit: MAX_JSON_BYTES as u64,
        });
    }
    serde_json::from_slice(bytes).map_err(|error| CodecError::Json { what, error })
}

/// Writes JSON with Python's `json.dumps` separators (`", "` and `": "`), as Templar's files have them.
fn python_json<T: Serialize>(value: &T) -> Vec<u8> {
    struct PythonFormatter;
    impl serde_json::ser::Formatter for PythonFormatter {
        fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser).expect("plain data serialises");
    out
}

impl PeerList {
    /// Parses a peer list.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CodecError> {
        parse(bytes, "peer list")
    }
    /// Serialises as Templar does.
    pub fn to_json(&self) -> Vec<u8> {
        python_json(self)
    }
}

impl StartWindow {
    /// Parses a start-window object.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CodecError> {
        parse(bytes, "start window")
    }
    /// Serialises as Templar does.
    pub fn to_json(&self) -> Vec<u8> {
        python_json(self)
    }
}
