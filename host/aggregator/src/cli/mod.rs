//! The binary's commands, one file each (benchmarks together in `bench/`): each defines its clap `Args` and the
//! function `main` dispatches to.

pub mod aggregate;
pub mod bench;
pub mod catchup;
pub mod codec;
pub mod completions;
pub mod devnet;
pub mod hparams;
pub mod plugin;
pub mod plugin_new;
pub mod replay;
pub mod run;
pub mod sim;
pub mod vectors;

/// Read credentials of the aggregator's bucket (`catchup`, `replay`): the flags, else `AGGREGATOR_READ_*`, else
/// Templar's own `R2_AGGREGATOR_READ_*` names.
#[derive(clap::Args, Debug)]
pub struct ReadCredentials {
    /// Read key id of the aggregator's bucket (else `R2_AGGREGATOR_READ_ACCESS_KEY_ID`).
    #[arg(long = "access-key-id", default_value = "", env = "AGGREGATOR_READ_ACCESS_KEY_ID")]
    access_key_id: String,
    /// Read secret (else `R2_AGGREGATOR_READ_SECRET_ACCESS_KEY`).
    #[arg(
        long = "secret",
        default_value = "",
        env = "AGGREGATOR_READ_SECRET",
        hide_env_values = true
    )]
    secret: String,
}

impl ReadCredentials {
    fn or_env(value: &str, templar: &str) -> String {
        match value {
            "" => std::env::var(templar).unwrap_or_default(),
            v => v.to_string(),
        }
    }

    /// The key id.
    pub fn access_key_id(&self) -> String {
        Self::or_env(&self.access_key_id, "R2_AGGREGATOR_READ_ACCESS_KEY_ID")
    }

    /// The secret.
    pub fn secret(&self) -> String {
        Self::or_env(&self.secret, "R2_AGGREGATOR_READ_SECRET_ACCESS_KEY")
    }
}
