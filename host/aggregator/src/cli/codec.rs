//! `aggregator codec inspect`: a file's keys, dtypes, shapes and metadata, or a one-line reason it is invalid.

use std::path::Path;
use std::process::ExitCode;

use aggregator_codec::{Gradient, Limits, PeerList, PtFile, StartWindow};
use aggregator_model::ModelSpec;
use anyhow::bail;

/// Prints the outline of a `.pt` file (or a Templar JSON object); exit 1 with a one-line reason if it is invalid.
pub fn inspect(path: &Path, model: Option<&str>) -> ExitCode {
    match inspect_text(path, model) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid: {e:#}", path.display());
            ExitCode::from(1)
        }
    }
}

fn inspect_text(path: &Path, model: Option<&str>) -> anyhow::Result<String> {
    let limits = Limits::default();
    let size = std::fs::metadata(path)?.len();
    if size > limits.max_archive_bytes {
        bail!("{size} bytes is over the limit of {}", limits.max_archive_bytes);
    }
    let bytes = std::fs::read(path)?;
    if bytes.first() == Some(&b'{') {
        if let Ok(p) = PeerList::from_json(&bytes) {
            let weights = match &p.weights {
                Some(w) => format!("{} weights", w.len()),
                None => "no weights".into(),
            };
            return Ok(format!(
                "peer list (JSON): {} peers {:?}, {weights}, sync window {}, first effective window {}{}\n",
                p.peers.len(),
                p.peers,
                p.sync_window,
                p.first_effective_window,
                if p.initial_selection { ", initial selection" } else { "" }
            ));
        }
        let s = StartWindow::from_json(&bytes)?;
        return Ok(format!("start window (JSON): {}\n", s.start_window));
    }
    let file = PtFile::parse(&bytes, &limits)?;
    let mut text = format!(
        "torch zip archive, root folder {:?}\n{}",
        file.root_folder(),
        file.describe()
    );
    if let Some(model) = model {
        let model = ModelSpec::load(model)?;
        let g = Gradient::read(&bytes, &model, &Limits::for_gradient(model.sparse_bytes() as u64))?;
        let present = g.params.iter().filter(|p| p.is_some()).count();
        text += &format!(
            "valid gradient of model {}: {present} of {} parameters present\n",
            model.name,
            model.params.len()
        );
    }
    Ok(text)
}
