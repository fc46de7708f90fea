//! A policy's `state` bytes as a versioned serde value.
//!
//! The host stores the bytes a call returns and passes them back on the next call, unchanged and uninterpreted
//! (they are also recorded in every window receipt). The format here is one version byte followed by the value as
//! JSON: readable in a receipt, and the version byte lets a new release of a plugin recognise (and migrate or
//! refuse) the state an older release wrote.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// State bytes that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateError {}

impl From<StateError> for String {
    fn from(e: StateError) -> String {
        e.0
    }
}

/// Reads state written by [`save`] with `version`; empty bytes (the first call) give `T::default()`.
pub fn load<T: DeserializeOwned + Default>(bytes: &[u8], version: u8) -> Result<T, StateError> {
    let Some((&v, body)) = bytes.split_first() else {
        return Ok(T::default());
    };
    if v != version {
        return Err(StateError(format!(
            "state of {} bytes has version {v}, this policy reads version {version}",
            bytes.len()
        )));
    }
    serde_json::from_slice(body).map_err(|e| StateError(format!("state (version {v}) does not parse: {e}")))
}

/// Writes `value` as state with `version` (1–255; 0 is reserved so that no state starts with a zero byte).
pub fn save<T: Serialize>(value: &T, version: u8) -> Vec<u8> {
    let mut out = vec![version];
    // Serializing plain data to a Vec cannot fail (no maps with non-string keys in a policy's state, no I/O).
    serde_json::to_writer(&mut out, value).expect("policy state serializes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        seen: Vec<u16>,
        last: Option<u64>,
    }

    #[test]
    fn round_trip_first_call_and_wrong_version() {
        let s = S {
            seen: vec![1, 2],
            last: Some(9),
        };
        let bytes = save(&s, 3);
        assert_eq!(bytes[0], 3);
        assert_eq!(load::<S>(&bytes, 3).unwrap(), s);
        assert_eq!(load::<S>(&[], 3).unwrap(), S::default());
        assert!(load::<S>(&bytes, 4).unwrap_err().0.contains("version 3"));
        assert!(load::<S>(&[3, b'{'], 3).is_err());
    }
}
