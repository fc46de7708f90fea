//! The binary's commands, one file each (benchmarks together in `bench/`): each defines its clap `Args` and the
//! function `main` dispatches to.

pub mod aggregate;
pub mod bench;
pub mod catchup;
pub mod codec;
pub mod devnet;
pub mod plugin;
pub mod plugin_new;
pub mod replay;
pub mod run;
pub mod sim;
pub mod vectors;
