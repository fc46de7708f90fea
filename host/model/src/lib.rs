//! Model layouts: which parameters a model has, in `named_parameters()` order, and how each is cut into DCT blocks.
//!
//! A layout comes from a built-in preset ([`ModelSpec::preset`]) or a JSON file ([`ModelSpec::from_json`]) in the
//! format of `shared/fixtures/templar-0.2.73/model.json`: either an explicit `parameters` list
//! (`{name, shape}` plus optional `xshape`, `totalk`, `idxs_shape`, `packed_len`, which are cross-checked) or a
//! LLaMA `config` from which the list is derived.

use std::path::Path;

use aggregator_kernels::{KernelError, ParamLayout};
use serde::Deserialize;
use thiserror::Error;

/// Target DCT block side of Templar 0.2.73.
pub const DEFAULT_TARGET_CHUNK: usize = 64;
/// Coefficients kept per block by Templar 0.2.73.
pub const DEFAULT_TOPK: usize = 32;
/// Upper bound on parameters per model (a hostile file cannot make us allocate without limit).
pub const MAX_PARAMS: usize = 100_000;
/// Upper bound on elements per model (2^40, about 1.1 T).
pub const MAX_NUMEL: usize = 1 << 40;
/// Upper bound on a model file's size.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Names of the built-in presets.
pub const PRESETS: [&str; 3] = ["tiny", "small", "templar-1b"];

/// Why a model layout could not be built.
#[derive(Debug, Error)]
pub enum ModelError {
    /// Neither a preset nor a readable file.
    #[error("model {name:?} is not a preset ({presets}) and cannot be read as a file: {error}")]
    Unknown {
        /// What was asked for.
        name: String,
        /// Comma-separated preset names.
        presets: String,
        /// The file error.
        error: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("model file {path} is {size} bytes; the limit is {MAX_FILE_BYTES}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Not valid JSON of the expected structure.
    #[error("model JSON: {0}")]
    Json(serde_json::Error),
    /// The JSON has neither `parameters` nor `config`.
    #[error("model JSON has neither a `parameters` list nor a LLaMA `config`")]
    Empty,
    /// A field of a parameter is wrong.
    #[error("parameter {name:?}: {field} {reason}")]
    Param {
        /// Parameter name.
        name: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The LLaMA configuration is inconsistent.
    #[error("LLaMA config: {0}")]
    Config(String),
    /// A limit was exceeded.
    #[error("model exceeds a limit: {0}")]
    Limit(String),
}

/// One parameter: its name and block layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// `named_parameters()` name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape and block layout.
    pub layout: ParamLayout,
}

/// A model: its parameters in order, with the compression settings used to lay them out.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Preset name or file name.
    pub name: String,
    /// Target DCT block side.
    pub target_chunk: usize,
    /// Coefficients kept per block (before clamping to the block size).
    pub topk: usize,
    /// Parameters in `named_parameters()` order.
    pub params: Vec<ParamSpec>,
}

/// The subset of a Hugging Face `LlamaConfig` that fixes parameter shapes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (defaults to `num_attention_heads`).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// MLP width.
    pub intermediate_size: usize,
    /// Whether `lm_head` shares the embedding (then it is not a separate parameter).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Parameter names and shapes in `LlamaForCausalLM.named_parameters()` order.
    pub fn parameters(&self) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        let (h, heads) = (self.hidden_size, self.num_attention_heads);
        if h == 0 || heads == 0 || h % heads != 0 {
            return Err(ModelError::Config(format!(
                "hidden_size {h} is not a positive multiple of num_attention_heads {heads}"
            )));
        }
        let kv = self.num_key_value_heads.unwrap_or(heads) * (h / heads);
        if self.num_hidden_layers > MAX_PARAMS / 9 {
            return Err(ModelError::Limit(format!("{} layers", self.num_hidden_layers)));
        }
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (name, shape) in [
                ("self_attn.q_proj", vec![h, h]),
                ("self_attn.k_proj", vec![kv, h]),
                ("self_attn.v_proj", vec![kv, h]),
                ("self_attn.o_proj", vec![h, h]),
                ("mlp.gate_proj", vec![self.intermediate_size, h]),
                ("mlp.up_proj", vec![self.intermediate_size, h]),
                ("mlp.down_proj", vec![h, self.intermediate_size]),
            ] {
                out.push((format!("{p}.{name}.weight"), shape));
            }
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
struct ModelFile {
    #[serde(default)]
    config: Option<LlamaConfig>,
    #[serde(default)]
    target_chunk: Option<usize>,
    #[serde(default)]
    topk: Option<usize>,
    #[serde(default)]
    numel: Option<usize>,
    #[serde(default)]
    parameters: Option<Vec<ParamFile>>,
}

#[derive(Deserialize)]
struct ParamFile {
    name: String,
    shape: Vec<usize>,
    #[serde(default)]
    xshape: Option<Vec<usize>>,
    #[serde(default)]
    totalk: Option<usize>,
    #[serde(default)]
    idxs_shape: Option<Vec<usize>>,
    #[serde(default)]
    packed_len: Option<usize>,
}

fn check<T: PartialEq + std::fmt::Debug>(
    name: &str,
    field: &'static str,
    given: Option<T>,
    computed: T,
) -> Result<(), ModelError> {
    match given {
        Some(g) if g != computed => Err(ModelError::Param {
            name: name.to_string(),
            field,
            reason: format!("is {g:?} but the chunk rule gives {computed:?}"),
        }),
        _ => Ok(()),
    }
}

impl ModelSpec {
    /// A built-in preset: `tiny` (the fixture model: vocab 256, hidden 64, 2 layers, 4 heads, intermediate 128),
    /// `small` (hidden 512, 4 layers, 8 heads, intermediate 2048, vocab 32000) or `templar-1b` (hidden 2048,
    /// 16 layers, 8 heads, 8 kv heads, intermediate 8192, vocab 32000: 1,204,881,408 parameters).
    pub fn preset(name: &str) -> Option<Self> {
        let cfg = |vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size| LlamaConfig {
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_attention_heads),
            intermediate_size,
            tie_word_embeddings: false,
        };
        let config = match name {
            "tiny" => cfg(256, 64, 2, 4, 128),
            "small" => cfg(32000, 512, 4, 8, 2048),
            "templar-1b" => cfg(32000, 2048, 16, 8, 8192),
            _ => return None,
        };
        Self::from_config(name, &config, DEFAULT_TARGET_CHUNK, DEFAULT_TOPK).ok()
    }

    /// A preset by name, or else a JSON file at that path.
    pub fn load(name_or_path: &str) -> Result<Self, ModelError> {
        if let Some(m) = Self::preset(name_or_path) {
            return Ok(m);
        }
        let path = Path::new(name_or_path);
        let unknown = |error| ModelError::Unknown {
            name: name_or_path.to_string(),
            presets: PRESETS.join(", "),
            error,
        };
        let size = std::fs::metadata(path).map_err(unknown)?.len();
        if size > MAX_FILE_BYTES {
            return Err(ModelError::TooLarge {
                path: name_or_path.to_string(),
                size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(unknown)?;
        let label = path
            .file_name()
            .map_or(name_or_path.into(), |f| f.to_string_lossy().into_owned());
        Self::from_json(&label, &text)
    }

    /// Parses the JSON model format (see the crate docs).
    pub fn from_json(name: &str, text: &str) -> Result<Self, ModelError> {
        let file: ModelFile = serde_json::from_str(text).map_err(ModelError::Json)?;
        let target_chunk = file.target_chunk.unwrap_or(DEFAULT_TARGET_CHUNK);
        let topk = file.topk.unwrap_or(DEFAULT_TOPK);
        let spec = match (file.parameters, &file.config) {
            (Some(params), _) => {
                if params.len() > MAX_PARAMS {
                    return Err(ModelError::Limit(format!(
                        "{} parameters (limit {MAX_PARAMS})",
                        params.len()
                    )));
                }
                let mut out = Vec::with_capacity(params.len());
                for p in params {
                    let layout = layout(&p.name, &p.shape, target_chunk, topk)?;
                    check(&p.name, "xshape", p.xshape, layout.xshape())?;
                    check(&p.name, "totalk", p.totalk, layout.totalk())?;
                    check(&p.name, "idxs_shape", p.idxs_shape, layout.idxs_shape())?;
                    check(&p.name, "packed_len", p.packed_len, layout.packed_len())?;
                    out.push(ParamSpec { name: p.name, layout });
                }
                Self {
                    name: name.to_string(),
                    target_chunk,
                    topk,
                    params: out,
                }
            }
            (None, Some(config)) => Self::from_config(name, config, target_chunk, topk)?,
            (None, None) => return Err(ModelError::Empty),
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = spec.params.iter().find(|p| !seen.insert(&p.name)) {
            return Err(ModelError::Param {
                name: dup.name.clone(),
                field: "name",
                reason: "appears twice".into(),
            });
        }
        if spec.numel() > MAX_NUMEL {
            return Err(ModelError::Limit(format!(
                "{} elements (limit {MAX_NUMEL})",
                spec.numel()
            )));
        }
        if let Some(n) = file.numel.filter(|&n| n != spec.numel()) {
            return Err(ModelError::Config(format!(
                "numel is {n} but the parameters add up to {}",
                spec.numel()
            )));
        }
        Ok(spec)
    }

    /// Lays out the parameters of a LLaMA configuration.
    pub fn from_config(name: &str, config: &LlamaConfig, target_chunk: usize, topk: usize) -> Result<Self, ModelError> {
        let params = config
            .parameters()?
            .into_iter()
            .map(|(n, shape)| {
                Ok(ParamSpec {
                    layout: layout(&n, &shape, target_chunk, topk)?,
                    name: n,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let spec = Self {
            name: name.to_string(),
            target_chunk,
            topk,
            params,
        };
        if spec.numel() > MAX_NUMEL {
            return Err(ModelError::Limit(format!(
                "{} elements (limit {MAX_NUMEL})",
                spec.numel()
            )));
        }
        Ok(spec)
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.layout.numel())
            .fold(0usize, usize::saturating_add)
    }

    /// Total bytes of the packed aggregate (sum of `ceil(numel / 8)` per parameter).
    pub fn packed_len(&self) -> usize {
        self.params.iter().map(|p| p.layout.packed_len()).sum()
    }

    /// Bytes of one peer's compressed gradient tensors (int16 idxs + f32 vals).
    pub fn sparse_bytes(&self) -> usize {
        self.params.iter().map(|p| p.layout.sparse_len() * 6).sum()
    }
}

fn layout(name: &str, shape: &[usize], target_chunk: usize, topk: usize) -> Result<ParamLayout, ModelError> {
    ParamLayout::new(shape, target_chunk, topk).map_err(|e: KernelError| ModelError::Param {
        name: name.to_string(),
        field: "shape",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/templar-0.2.73/model.json"
    );

    #[test]
    fn templar_1b_has_the_reference_size() {
        let m = ModelSpec::preset("templar-1b").unwrap();
        assert_eq!(m.numel(), 1_204_881_408);
        assert_eq!(m.packed_len(), 150_610_176);
        assert_eq!(m.params.len(), 1 + 16 * 9 + 2);
        assert_eq!(m.params[0].layout.xshape(), [500, 32, 64, 64]);
    }

    #[test]
    fn fixture_json_equals_the_tiny_preset() {
        let text = std::fs::read_to_string(FIXTURE).expect("shared fixtures are beside the checkout");
        let from_file = ModelSpec::from_json("model.json", &text).unwrap();
        let preset = ModelSpec::preset("tiny").unwrap();
        assert_eq!(from_file.params, preset.params);
        assert_eq!(from_file.numel(), 115_008);
        // The same file reduced to its config derives the same list.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cfg_only = serde_json::json!({ "config": v["config"] }).to_string();
        assert_eq!(ModelSpec::from_json("cfg", &cfg_only).unwrap().params, preset.params);
    }

    #[test]
    fn rejects_inconsistent_files() {
        let bad_xshape = r#"{"parameters":[{"name":"a","shape":[64,64],"xshape":[1,1,32,64]}]}"#;
        let e = ModelSpec::from_json("x", bad_xshape).unwrap_err().to_string();
        assert!(e.contains("\"a\"") && e.contains("xshape"), "{e}");
        let dup = r#"{"parameters":[{"name":"a","shape":[8]},{"name":"a","shape":[8]}]}"#;
        assert!(
            ModelSpec::from_json("x", dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(matches!(ModelSpec::from_json("x", "{}"), Err(ModelError::Empty)));
        let three_d = r#"{"parameters":[{"name":"c","shape":[2,2,2]}]}"#;
        assert!(
            ModelSpec::from_json("x", three_d)
                .unwrap_err()
                .to_string()
                .contains("\"c\"")
        );
        assert!(matches!(
            ModelSpec::load("no-such-preset"),
            Err(ModelError::Unknown { .. })
        ));
    }
}
