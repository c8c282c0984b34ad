//! Trained models on disk: safetensors (loads in PyTorch and numpy) with gang's metadata.
//!
//! Tensors follow PyTorch's `nn.Linear` layout: `layer{i}.weight` `[out, in]` and
//! `layer{i}.bias` `[out]`. Metadata (`__metadata__`, strings): `format` = `gang-model/1`,
//! `model` (`logistic`, `softmax`, `linear`, `mlp:64,32`), `classes`, `features` (a JSON
//! list of column names), `label`, and the final training figures.

use crate::checkpoint::safetensors;
use crate::checkpoint::Tensor;
use crate::error::{Error, Result};
use gang_kernels::Model;
use std::collections::BTreeMap;
use std::path::Path;

/// The format tag in the metadata.
pub const FORMAT: &str = "gang-model/1";

/// What a model file says about its model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The `--model` spec it was trained with.
    pub spec: String,
    /// Classes of the label (0: real-valued).
    pub classes: usize,
    /// Feature columns, in order.
    pub features: Vec<String>,
    /// The label column.
    pub label: String,
    /// Everything in the metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Writes `model` to `path` through gang's durable write (a temporary file, fsync, rename,
/// fsync of the directory): a reader sees the old model or the new one, never a mix.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn save(path: &Path, model: &Model, info: &ModelInfo) -> Result<()> {
    let params = model.params();
    let tensors: Vec<Tensor> = model
        .tensors()
        .into_iter()
        .map(|v| Tensor { name: v.name.clone(), shape: v.shape.clone(), data: params[v.range()].to_vec() })
        .collect();
    let mut meta = info.metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("model".into(), info.spec.clone());
    meta.insert("classes".into(), info.classes.to_string());
    meta.insert("features".into(), serde_json::to_string(&info.features).map_err(Error::external)?);
    meta.insert("label".into(), info.label.clone());
    let bytes = safetensors::to_bytes(&tensors.iter().map(Into::into).collect::<Vec<_>>(), &meta);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(path, e))?;
    }
    crate::durable::write_file(path, &bytes)
}

/// The version of a model file for the fingerprint of a stage that applies it
/// ([`crate::stage::MapStage::version`]): `model-<16 hex digits>`, a hash of the file's
/// bytes, so another model (other weights, features or classes) is another stage.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn version(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("model-{:016x}", crate::stage::manifest::fnv1a64(&bytes)))
}

/// Reads a model written by [`save`].
///
/// # Errors
/// [`Error::Input`] naming the file when it is not a gang model or does not fit its own
/// metadata.
pub fn load(path: &Path) -> Result<(Model, ModelInfo)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (tensors, metadata) = safetensors::decode(path, &bytes)?;
    let bad = |detail: String| Error::input(path, Some("metadata".into()), detail);
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "not a gang model (format {:?}, expected {FORMAT:?}): was it written by gang train?",
            metadata.get("format")
        )));
    }
    let get = |k: &str| metadata.get(k).cloned().ok_or_else(|| bad(format!("no {k:?} in the metadata")));
    let info = ModelInfo {
        spec: get("model")?,
        classes: get("classes")?.parse().map_err(|_| bad("classes is not a number".into()))?,
        features: serde_json::from_str(&get("features")?).map_err(|e| bad(format!("features: {e}")))?,
        label: get("label")?,
        metadata: metadata.clone(),
    };
    let kind = super::parse_model(&info.spec, info.classes)?;
    // The flat parameters, in the model's own tensor order.
    let probe = Model::new(kind.clone(), info.features.len(), 0).map_err(super::kernel_error)?;
    let mut params = vec![0f32; probe.num_params()];
    for v in probe.tensors() {
        let t = tensors.iter().find(|t| t.name == v.name).ok_or_else(|| {
            Error::input(
                path,
                Some(format!("tensor {:?}", v.name)),
                format!("missing: the file does not hold a {} model", info.spec),
            )
        })?;
        if t.shape != v.shape {
            return Err(Error::input(
                path,
                Some(format!("tensor {:?}", v.name)),
                format!("shape {:?}, expected {:?}", t.shape, v.shape),
            ));
        }
        params[v.range()].copy_from_slice(&t.data);
    }
    let model = Model::from_params(kind, info.features.len(), params).map_err(super::kernel_error)?;
    Ok((model, info))
}
