//! `aggregator completions SHELL` and `aggregator man`: shell completions (clap_complete) and a man page
//! (clap_mangen) generated from the command definition itself, so they cannot drift from it.

use std::io::Write;

use clap::CommandFactory;

/// Writes `shell`'s completion script to stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "aggregator", &mut std::io::stdout());
    Ok(())
}

/// Writes the man page (roff) to stdout.
pub fn man() -> anyhow::Result<()> {
    let cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(())
}
