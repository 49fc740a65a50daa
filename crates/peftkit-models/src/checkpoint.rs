//! safetensors checkpoints: reading (single file or sharded index), loading by HF names with
//! clear errors, and atomic writing.

use crate::{io_err, ModelError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// What loading a checkpoint did, like the warnings `from_pretrained` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The safetensors files read.
    pub files: Vec<PathBuf>,
    /// Parameters loaded from the checkpoint.
    pub loaded: usize,
    /// Parameters not in the checkpoint that were newly initialised (the classification head).
    pub newly_initialized: Vec<String>,
    /// Checkpoint keys that belong to another head or are buffers, and were not used.
    pub unused: Vec<String>,
    /// Loaded tensors holding NaN or ±Inf (a broken or diverged checkpoint: its logits will not
    /// be finite, which evaluation and prediction refuse).
    pub non_finite: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} tensors from {} file(s)",
            self.loaded,
            self.files.len()
        )?;
        if !self.newly_initialized.is_empty() {
            write!(
                f,
                "; newly initialized (train them): {}",
                self.newly_initialized.join(", ")
            )?;
        }
        if !self.unused.is_empty() {
            write!(f, "; unused checkpoint keys: {}", self.unused.join(", "))?;
        }
        if !self.non_finite.is_empty() {
            write!(
                f,
                "; NaN or infinite values in: {}",
                self.non_finite.join(", ")
            )?;
        }
        Ok(())
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file onto the CPU, in the file's dtypes, in key order.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; tensors are copied.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let kind = kind_of(view.dtype()).ok_or_else(|| ModelError::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.push((name, t));
    }
    Ok(out)
}

/// The safetensors files of a checkpoint: a `.safetensors` file itself, or a directory with
/// `model.safetensors` or `model.safetensors.index.json` (shards in index order).
pub(crate) fn checkpoint_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let single = path.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = path.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: index.clone(),
                message: format!("invalid JSON: {e}"),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| path.join(f)).collect());
    }
    let pickle = path.join("pytorch_model.bin").is_file();
    Err(io_err(
        path,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            if pickle {
                "only pytorch_model.bin here: peftkit loads safetensors only (convert it with transformers' `save_pretrained(safe_serialization=True)`)"
            } else {
                "no model.safetensors or model.safetensors.index.json"
            },
        ),
    ))
}

/// How one architecture names its parameters, for loading checkpoints saved by other classes
/// (a base model without the prefix, a language model with another head).
pub(crate) struct Naming {
    pub arch: &'static str,
    /// `transformer`, `roberta`, `bert`.
    pub base_prefix: &'static str,
    /// Prefixes of the classification head, which may be missing from a checkpoint.
    pub head_prefixes: &'static [&'static str],
    /// Prefixes and suffixes of keys other classes save that this one ignores.
    pub ignored_prefixes: &'static [&'static str],
    pub ignored_suffixes: &'static [&'static str],
}

impl Naming {
    fn is_head(&self, name: &str) -> bool {
        self.head_prefixes.iter().any(|p| name.starts_with(p))
    }

    fn is_ignored(&self, key: &str) -> bool {
        let unprefixed = key
            .strip_prefix(self.base_prefix)
            .and_then(|k| k.strip_prefix('.'))
            .unwrap_or(key);
        self.ignored_prefixes
            .iter()
            .any(|p| key.starts_with(p) || unprefixed.starts_with(p))
            || self.ignored_suffixes.iter().any(|s| key.ends_with(s))
    }
}

/// Copies a checkpoint into `vars` (the model's named parameters).
pub(crate) fn load_into(
    vars: &HashMap<String, Tensor>,
    path: &Path,
    naming: &Naming,
) -> Result<LoadReport> {
    let files = checkpoint_files(path)?;
    let mut report = LoadReport {
        files: files.clone(),
        ..Default::default()
    };
    let mut loaded = std::collections::HashSet::new();
    for file in &files {
        for (key, tensor) in read_safetensors(file)? {
            let prefixed = format!("{}.{key}", naming.base_prefix);
            let name = if vars.contains_key(&key) {
                key.clone()
            } else if vars.contains_key(&prefixed) {
                prefixed
            } else if naming.is_ignored(&key) {
                report.unused.push(key);
                continue;
            } else {
                return Err(ModelError::UnexpectedKey {
                    path: file.clone(),
                    key,
                    arch: naming.arch.into(),
                });
            };
            let var = &vars[&name];
            if var.size() != tensor.size() {
                let hint = if naming.is_head(&name) {
                    " (the checkpoint's classification head has another number of labels: set the labels to match it, or remove the head from the checkpoint)".to_string()
                } else {
                    String::new()
                };
                return Err(ModelError::ShapeMismatch {
                    path: file.clone(),
                    key,
                    checkpoint: tensor.size(),
                    model: var.size(),
                    hint,
                });
            }
            if tensor.is_floating_point() && !bool::try_from(tensor.isfinite().all())? {
                report.non_finite.push(key.clone());
            }
            let mut var = var.shallow_clone();
            tch::no_grad(|| var.f_copy_(&tensor))?;
            loaded.insert(name);
        }
    }
    let mut missing: Vec<String> = vars
        .keys()
        .filter(|k| !loaded.contains(*k))
        .cloned()
        .collect();
    missing.sort();
    let (head, base): (Vec<String>, Vec<String>) =
        missing.into_iter().partition(|k| naming.is_head(k));
    if !base.is_empty() {
        return Err(ModelError::MissingKeys {
            path: path.to_path_buf(),
            keys: base,
        });
    }
    report.loaded = loaded.len();
    report.newly_initialized = head;
    report.unused.sort();
    Ok(report)
}

/// Writes tensors to a safetensors file atomically (temp file + rename), with `format: pt`
/// metadata so that transformers and peft accept it.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut buffers: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).ok_or_else(|| ModelError::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: format!("{:?}", t.kind()),
        })?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        buffers.insert(name.clone(), (dtype, shape, data));
    }
    let views = buffers
        .iter()
        .map(|(k, (dtype, shape, data))| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_file_atomically(path, &bytes)
}

/// Writes a file through a temporary sibling and a rename, so readers never see half a file.
pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}

/// Removes what killed writers of `name` left beside it: `.{name}.tmp-PID` / `.{name}.old-PID`
/// directories whose process is gone (or is this one).
fn remove_stale_siblings(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let Some(rest) = file.strip_prefix(&format!(".{name}.")) else {
            continue;
        };
        let pid = rest
            .strip_prefix("tmp-")
            .or_else(|| rest.strip_prefix("old-"))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Builds a directory through a temporary sibling and renames it into place when `fill`
/// succeeds: an interrupted or failed save never leaves a half-written directory, and an existing
/// directory is replaced only by a complete one.
pub fn write_dir_atomically<E>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    E: From<ModelError>,
{
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Only a directory is ever replaced: a file (the user's) at that path is refused untouched.
    if dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
        return Err(E::from(io_err(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a directory: refusing to replace it (choose another output)",
            ),
        )));
    }
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    remove_stale_siblings(parent, &name);
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = replace_dir(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(E::from(io_err(dir, e)));
    }
    Ok(())
}

/// Puts the complete directory `new` at `dir` in one step: where `dir` exists the two are
/// exchanged atomically (Linux `renameat2(RENAME_EXCHANGE)`), so that at every instant `dir` is
/// either the old or the new directory, and the old one (now at `new`) is removed; elsewhere the
/// old one is renamed aside first. A kill before the removal leaves the old directory at `new`,
/// a temporary name that the next write of `dir` clears.
pub fn replace_dir(new: &Path, dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return std::fs::rename(new, dir);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
        let (a, b) = (c(new)?, c(dir)?);
        // SAFETY: two valid NUL-terminated paths, relative to the working directory.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return std::fs::remove_dir_all(new);
        }
        let err = std::io::Error::last_os_error();
        // Filesystems without the exchange fall through to two renames.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(err);
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let old = dir
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.old-{}", std::process::id()));
    std::fs::rename(dir, &old)?;
    if let Err(e) = std::fs::rename(new, dir) {
        let _ = std::fs::rename(&old, dir);
        return Err(e);
    }
    std::fs::remove_dir_all(&old)
}
