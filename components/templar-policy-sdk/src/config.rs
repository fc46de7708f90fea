//! The operator's settings (`[policy.settings]` on the host), typed.

use std::fmt;
use std::str::FromStr;

/// A policy's `config` (`(key, value)` pairs, values as text), with typed getters whose errors name the key, the
/// value and the type expected. Unknown keys are ignored (the host passes one settings table to every policy kind).
#[derive(Debug, Clone, Copy)]
pub struct Config<'a>(&'a [(String, String)]);

/// A setting that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key.
    pub key: String,
    /// The value as given.
    pub value: String,
    /// What was expected, e.g. `u64` or `a comma-separated list of u16`.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}: {:?} is not {}", self.key, self.value, self.expected)
    }
}

impl std::error::Error for ConfigError {}

/// So that `?` works in a policy function returning `Result<_, String>`.
impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

fn short_type_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

impl<'a> Config<'a> {
    /// Wraps a policy input's `config`.
    pub fn new(pairs: &'a [(String, String)]) -> Self {
        Self(pairs)
    }

    /// The raw text of `key` (trimmed), if set. With a key set twice, the first one counts.
    pub fn raw(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim())
    }

    /// `key` parsed as `T`, or `default` when it is not set.
    pub fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.get_opt(key)?.unwrap_or(default))
    }

    /// `key` parsed as `T`, or `None` when it is not set.
    pub fn get_opt<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        value.parse().map(Some).map_err(|_| ConfigError {
            key: key.into(),
            value: value.into(),
            expected: format!("a valid {}", short_type_name::<T>()),
        })
    }

    /// `key` as a comma-separated list of `T` (empty items are skipped); an empty list when it is not set.
    pub fn list<T: FromStr>(&self, key: &str) -> Result<Vec<T>, ConfigError> {
        let Some(value) = self.raw(key) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                item.parse().map_err(|_| ConfigError {
                    key: key.into(),
                    value: value.into(),
                    expected: format!(
                        "a comma-separated list of {} ({item:?} is not one)",
                        short_type_name::<T>()
                    ),
                })
            })
            .collect()
    }

    /// `key` as a selection weight the host accepts ([`crate::weight_ok`]), or `default`.
    pub fn weight(&self, key: &str, default: f32) -> Result<f32, ConfigError> {
        let w: f32 = self.get(key, default)?;
        if crate::weight_ok(w) {
            Ok(w)
        } else {
            Err(ConfigError {
                key: key.into(),
                value: self.raw(key).unwrap_or_default().into(),
                expected: "0 or a weight in [2^-20, 2^20]".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn typed_values_defaults_and_errors_that_name_the_key() {
        let p = pairs(&[("n", " 7 "), ("bad", "x"), ("uids", "1, 2,,3"), ("w", "1e9")]);
        let c = Config::new(&p);
        assert_eq!(c.get("n", 1u32), Ok(7));
        assert_eq!(c.get("absent", 5u32), Ok(5));
        assert_eq!(c.list::<u16>("uids"), Ok(vec![1, 2, 3]));
        let e = c.get("bad", 0u64).unwrap_err();
        assert_eq!(e.to_string(), "config bad: \"x\" is not a valid u64");
        assert!(c.weight("w", 1.0).unwrap_err().to_string().contains("config w"));
        assert!(
            c.list::<u16>("bad")
                .unwrap_err()
                .to_string()
                .contains("\"x\" is not one")
        );
    }
}
