//! `run --hparams hparams.json`: the keys of Templar's hyperparameter file that apply to the aggregation server,
//! laid over the defaults under the configuration file (a key the file sets keeps the file's value), flags and
//! environment variables. Keys that describe the model are checked against `model` rather than taken: a mismatch is
//! an error naming both values. The others are listed as not used.

use std::path::Path;

use aggregator_daemon::DaemonConfig;
use aggregator_model::ModelSpec;
use anyhow::{Context, bail};
use serde_json::Value;

/// Largest `hparams.json` read.
const MAX_BYTES: u64 = 1 << 20;

/// Keys passed to the policies as settings (`[policy.settings]`), as Templar's code reads them.
const SETTINGS: [&str; 4] = [
    "time_window_delta_seconds",
    "peer_replacement_frequency",
    "peer_list_window_margin",
    "sync_max_steps_behind",
];

/// Applies `path` to `config`; `file` is the configuration file's table (its keys win). Returns one line per key
/// taken, checked or not used, for the log.
pub fn apply(path: &Path, config: &mut DaemonConfig, file: Option<&toml::Table>) -> anyhow::Result<Vec<String>> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("--hparams {}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("--hparams {}", path.display()))?;
    if text.len() as u64 > MAX_BYTES {
        bail!("--hparams {}: larger than {MAX_BYTES} bytes", path.display());
    }
    let json: Value = serde_json::from_str(&text).with_context(|| format!("--hparams {}: not JSON", path.display()))?;
    let Value::Object(map) = json else {
        bail!("--hparams {}: expected a JSON object", path.display());
    };
    let name = path.display();
    let in_file = |section: Option<&str>, key: &str| -> bool {
        let Some(t) = file else { return false };
        match section {
            None => t.contains_key(key),
            Some(s) => t
                .get("policy")
                .and_then(|p| p.get(s))
                .and_then(|s| s.get(key))
                .is_some(),
        }
    };
    let mut notes = Vec::new();
    let model = ModelSpec::load(&config.model).with_context(|| format!("model {}", config.model))?;
    for (key, value) in &map {
        let int = || {
            value
                .as_u64()
                .with_context(|| format!("--hparams {name}: {key} = {value}: expected a non-negative integer"))
        };
        match key.as_str() {
            "blocks_per_window" => {
                let v = u32::try_from(int()?).with_context(|| format!("--hparams {name}: {key} too large"))?;
                if in_file(None, key) {
                    notes.push(format!(
                        "{key}: the configuration file's {} kept",
                        config.blocks_per_window
                    ));
                } else {
                    config.blocks_per_window = v;
                    notes.push(format!("{key} = {v}"));
                }
            }
            k if SETTINGS.contains(&k) => {
                let v = match value {
                    Value::Number(n) => n.to_string(),
                    other => bail!("--hparams {name}: {key} = {other}: expected a number"),
                };
                if in_file(Some("settings"), key) {
                    notes.push(format!("policy setting {key}: the configuration file's value kept"));
                } else {
                    config.policy.settings.insert(key.clone(), v.clone());
                    notes.push(format!("policy setting {key} = {v}"));
                }
            }
            "topk_compression" | "target_chunk" => {
                let v = int()? as usize;
                let ours = if key == "topk_compression" {
                    model.topk
                } else {
                    model.target_chunk
                };
                if v != ours {
                    bail!(
                        "--hparams {name}: {key} = {v}, but model {} has {ours}; give --model a JSON file with \
                         \"topk\"/\"target_chunk\" set to the network's values",
                        config.model
                    );
                }
                notes.push(format!("{key} = {v} matches model {}", config.model));
            }
            _ => notes.push(format!("{key}: not used by the aggregation server")),
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let p = dir.path().join("hparams.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn templar_keys_apply_and_the_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            r#"{"blocks_per_window": 12, "time_window_delta_seconds": 15, "topk_compression": 32,
                "target_chunk": 64, "learning_rate": 4e-4, "peer_replacement_frequency": 5}"#,
        );
        let mut c = DaemonConfig::default();
        let notes = apply(&p, &mut c, None).unwrap();
        assert_eq!(c.blocks_per_window, 12);
        assert_eq!(c.policy.settings["time_window_delta_seconds"], "15");
        assert_eq!(c.policy.settings["peer_replacement_frequency"], "5");
        assert!(
            notes
                .iter()
                .any(|n| n == "learning_rate: not used by the aggregation server"),
            "{notes:?}"
        );

        let file: toml::Table =
            toml::from_str("blocks_per_window = 7\n[policy.settings]\ntime_window_delta_seconds = \"9\"\n").unwrap();
        let mut c = DaemonConfig::default();
        c.policy.settings.insert("time_window_delta_seconds".into(), "9".into());
        apply(&p, &mut c, Some(&file)).unwrap();
        assert_eq!(c.blocks_per_window, 7);
        assert_eq!(c.policy.settings["time_window_delta_seconds"], "9");
    }

    #[test]
    fn a_model_mismatch_or_a_bad_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DaemonConfig::default();
        let e = apply(&write(&dir, r#"{"topk_compression": 64}"#), &mut c, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("topk_compression = 64, but model templar-1b has 32"),
            "{e:#}"
        );
        let e = apply(&write(&dir, r#"{"blocks_per_window": "seven"}"#), &mut c, None).unwrap_err();
        assert!(format!("{e:#}").contains("blocks_per_window = \"seven\""), "{e:#}");
        let e = apply(&dir.path().join("absent.json"), &mut c, None).unwrap_err();
        assert!(format!("{e:#}").contains("absent.json"), "{e:#}");
    }
}
