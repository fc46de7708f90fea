//! Python policy components for tests and benchmarks: componentize-py ([`COMPONENTIZE_PY`], from PyPI, or the
//! executable named by `$COMPONENTIZE_PY`) turns a Python app and the host's WIT into a component. Builds are cached
//! by the SHA-256 of everything that goes into them, so that each test process does not spend ~15 s rebuilding.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The pinned componentize-py.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The componentize-py executable: `$COMPONENTIZE_PY` if set, else installed into `scratch/../componentize-py-venv`.
pub fn componentize_py(scratch: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("COMPONENTIZE_PY") {
        return Ok(PathBuf::from(p));
    }
    let venv = scratch.parent().unwrap_or(scratch).join("componentize-py-venv");
    crate::pypi::tool(&venv, COMPONENTIZE_PY, "componentize-py")
}

/// The component built from the Python module `app` in `dir` (every `.py` file there goes in) for `world` of the WIT
/// at `wit`; cached in `scratch/python-components`.
pub fn build(scratch: &Path, dir: &Path, app: &str, wit: &Path, world: &str) -> Result<Vec<u8>, String> {
    let mut h = Sha256::new();
    h.update(COMPONENTIZE_PY);
    h.update(world);
    h.update(app);
    h.update(std::fs::read(wit).map_err(|e| format!("{}: {e}", wit.display()))?);
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    sources.sort();
    for p in &sources {
        h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    let key: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let cache = scratch.join("python-components");
    let out = cache.join(format!("{app}-{world}-{key}.wasm"));
    if let Ok(bytes) = std::fs::read(&out) {
        return Ok(bytes);
    }
    std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    let tool = componentize_py(scratch)?;
    let tmp = cache.join(format!("{app}-{world}-{key}.{}.partial", std::process::id()));
    let output = Command::new(&tool)
        .arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize", "-p"])
        .arg(dir)
        .arg(app)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("{}: {e}", tool.display()))?;
    if !output.status.success() {
        return Err(format!(
            "componentize-py {app} ({world}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    std::fs::read(&out).map_err(|e| e.to_string())
}
