//! Model checkpoints for catch-up: safetensors (read and written, with the window in the metadata) and torch `.pt`
//! state dicts (read through the restricted codec: a `model_state_dict` inside a Templar checkpoint, or a plain
//! state dict).

use std::collections::HashMap;
use std::path::Path;

use aggregator_codec::{Limits, PtFile};
use aggregator_model::ModelSpec;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::CatchupError;

/// A model's parameters at the end of a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The last window applied.
    pub window: u64,
    /// The network's start window (fixes the schedule step of each window).
    pub start_window: u64,
    /// `(name, values)` in model order.
    pub params: Vec<(String, Vec<f32>)>,
}

fn bad(path: &Path, m: impl std::fmt::Display) -> CatchupError {
    CatchupError::Checkpoint(format!("{}: {m}", path.display()))
}

impl Checkpoint {
    /// A seeded initial model (uniform in ±0.02), as the simulator's validator starts.
    pub fn init(model: &ModelSpec, seed: u64, window: u64, start_window: u64) -> Self {
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            // SplitMix64: a tiny, reproducible generator for test models.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let params = model
            .params
            .iter()
            .map(|p| {
                let v = (0..p.layout.numel())
                    .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04)
                    .collect();
                (p.name.clone(), v)
            })
            .collect();
        Self {
            window,
            start_window,
            params,
        }
    }

    /// Loads a `.safetensors` or `.pt` checkpoint, checking every model parameter's presence and size. The window
    /// and start window come from the safetensors metadata or the `.pt` keys (`sync_window`/`current_window`,
    /// `start_window`); `window`/`start_window` override them (and are needed when the file has none).
    pub fn load(
        path: &Path,
        model: &ModelSpec,
        window: Option<u64>,
        start_window: Option<u64>,
    ) -> Result<Self, CatchupError> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
        let (tensors, meta_window, meta_start) = if bytes.starts_with(b"PK") {
            load_pt(path, &bytes, model)?
        } else {
            load_safetensors(path, &bytes, model)?
        };
        let window = window
            .or(meta_window)
            .ok_or_else(|| bad(path, "no window in the file: give it (--from)"))?;
        let start_window = start_window
            .or(meta_start)
            .ok_or_else(|| bad(path, "no start window in the file: give it (--start-window)"))?;
        Ok(Self {
            window,
            start_window,
            params: tensors,
        })
    }

    /// The safetensors bytes (parameters in model order, window and start window in the metadata).
    pub fn to_safetensors(&self, model: &ModelSpec) -> Result<Vec<u8>, CatchupError> {
        let views = self
            .params
            .iter()
            .zip(&model.params)
            .map(|((name, v), spec)| {
                let bytes: &[u8] = bytemuck_f32(v);
                TensorView::new(Dtype::F32, spec.layout.shape().to_vec(), bytes)
                    .map(|t| (name.clone(), t))
                    .map_err(|e| CatchupError::Checkpoint(format!("{name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut meta = HashMap::new();
        meta.insert("window".to_string(), self.window.to_string());
        meta.insert("start_window".to_string(), self.start_window.to_string());
        safetensors::serialize(views, Some(meta)).map_err(|e| CatchupError::Checkpoint(e.to_string()))
    }

    /// Writes the safetensors file atomically.
    pub fn save(&self, path: &Path, model: &ModelSpec) -> Result<(), CatchupError> {
        let bytes = self.to_safetensors(model)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| bad(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| bad(path, e))
    }
}

/// The bytes of an f32 slice (little-endian targets only, as torch and safetensors store them).
fn bytemuck_f32(v: &[f32]) -> &[u8] {
    const { assert!(cfg!(target_endian = "little")) };
    // SAFETY: f32 has no padding or invalid bit patterns, u8 has alignment 1, and the length covers the same
    // bytes. Hand-written because it is one cast (bytemuck would be a dependency for this alone).
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

type Loaded = (Vec<(String, Vec<f32>)>, Option<u64>, Option<u64>);

fn load_safetensors(path: &Path, bytes: &[u8], model: &ModelSpec) -> Result<Loaded, CatchupError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(path, e))?;
    let get = |k: &str| -> Result<Option<u64>, CatchupError> {
        match meta.metadata().as_ref().and_then(|m| m.get(k)) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| bad(path, format!("metadata {k} = {v:?}: {e}"))),
        }
    };
    let mut params = Vec::with_capacity(model.params.len());
    for p in &model.params {
        let t = st.tensor(&p.name).map_err(|e| bad(path, format!("{}: {e}", p.name)))?;
        if t.dtype() != Dtype::F32 || t.shape() != p.layout.shape() {
            return Err(bad(
                path,
                format!(
                    "{}: {:?} {:?}, expected F32 {:?}",
                    p.name,
                    t.dtype(),
                    t.shape(),
                    p.layout.shape()
                ),
            ));
        }
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        params.push((p.name.clone(), v));
    }
    Ok((params, get("window")?, get("start_window")?))
}

fn load_pt(path: &Path, bytes: &[u8], model: &ModelSpec) -> Result<Loaded, CatchupError> {
    let limits = Limits {
        max_archive_bytes: bytes.len() as u64,
        max_tensor_bytes: (model.numel() as u64 * 4).max(1 << 20) * 2,
        ..Limits::default()
    };
    let file = PtFile::parse(bytes, &limits).map_err(|e| bad(path, e))?;
    let root = file.root();
    let state = match file
        .get(root, "model_state_dict", "checkpoint")
        .map_err(|e| bad(path, e))?
    {
        Some(id) => id,
        None => root,
    };
    let int = |k: &str| -> Option<u64> {
        let id = file.get(root, k, "checkpoint").ok()??;
        file.int(id, k).ok().and_then(|v| u64::try_from(v).ok())
    };
    let mut params = Vec::with_capacity(model.params.len());
    for p in &model.params {
        let id = file
            .get(state, &p.name, "model_state_dict")
            .map_err(|e| bad(path, e))?
            .ok_or_else(|| bad(path, format!("no tensor {}", p.name)))?;
        let meta = file.tensor_meta(id, &p.name).map_err(|e| bad(path, e))?;
        if meta.shape != p.layout.shape() {
            return Err(bad(
                path,
                format!("{}: shape {:?}, expected {:?}", p.name, meta.shape, p.layout.shape()),
            ));
        }
        let v: Vec<f32> = file.tensor(meta, &p.name).map_err(|e| bad(path, e))?;
        params.push((p.name.clone(), v));
    }
    Ok((
        params,
        int("sync_window").or_else(|| int("current_window")),
        int("start_window"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aggregator_codec::DType;
    use aggregator_codec::write::{Obj, write_pt};

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("catchup-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn safetensors_and_torch_state_dicts_load_the_same_model() {
        let model = ModelSpec::preset("tiny").unwrap();
        let ckpt = Checkpoint::init(&model, 7, 12, 3);
        let d = dir();
        let st = d.join("c.safetensors");
        ckpt.save(&st, &model).unwrap();
        assert_eq!(Checkpoint::load(&st, &model, None, None).unwrap(), ckpt);
        assert_eq!(
            Checkpoint::load(&st, &model, Some(20), None).unwrap().window,
            20,
            "--from overrides"
        );

        // A Templar-style checkpoint: {"model_state_dict": {...}, "start_window": 3, "sync_window": 12}.
        let state = ckpt
            .params
            .iter()
            .zip(&model.params)
            .map(|((n, v), p)| {
                (
                    Obj::str(n.as_str()),
                    Obj::tensor_from(DType::F32, p.layout.shape().to_vec(), v, |x: f32| {
                        x.to_le_bytes().to_vec()
                    }),
                )
            })
            .collect();
        let root = Obj::Dict(vec![
            (Obj::str("model_state_dict"), Obj::Dict(state)),
            (Obj::str("start_window"), Obj::Int(3)),
            (Obj::str("sync_window"), Obj::Int(12)),
        ]);
        let pt = d.join("c.pt");
        std::fs::write(&pt, write_pt(&root).unwrap()).unwrap();
        assert_eq!(Checkpoint::load(&pt, &model, None, None).unwrap(), ckpt);

        // Wrong shapes and missing windows are named.
        let small = ModelSpec::preset("small").unwrap();
        let e = Checkpoint::load(&st, &small, None, None).unwrap_err().to_string();
        assert!(e.contains("c.safetensors"), "{e}");
        let bare = Obj::Dict(vec![]);
        std::fs::write(&pt, write_pt(&bare).unwrap()).unwrap();
        let e = Checkpoint::load(&pt, &model, Some(1), Some(0)).unwrap_err().to_string();
        assert!(e.contains("no tensor"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }
}
