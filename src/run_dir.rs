//! Where a run writes: `--output` is only ever absent, a user's empty directory, or a complete
//! peftkit output. A run works in `NAME.partial` beside it (checkpoints, metrics, the report as it
//! grows, the saved model) and, when complete, takes the place of `--output` in one atomic step
//! ([`peftkit_models::replace_dir`]). So a run killed at any point leaves the previous output as
//! it was, and its `NAME.partial` to resume (`--resume latest` looks there first).
//!
//! Each peftkit output holds a marker file, [`MARKER`]; a non-empty directory without one is a
//! user's, and is refused rather than written into or replaced.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The marker file of a directory peftkit wrote.
pub const MARKER: &str = ".peftkit";

/// What a marker records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Marker {
    /// `run` or `merge`.
    kind: String,
    /// False while the run is under way.
    complete: bool,
    /// The peftkit version that wrote it.
    peftkit: String,
}

fn read_marker(dir: &Path) -> Option<Marker> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(MARKER)).ok()?).ok()
}

/// Writes the marker of an output of `kind` into `dir`.
pub fn write_marker(dir: &Path, kind: &str, complete: bool) -> Result<()> {
    let m = Marker {
        kind: kind.into(),
        complete,
        peftkit: env!("CARGO_PKG_VERSION").into(),
    };
    crate::report::write_atomically(&dir.join(MARKER), serde_json::to_string(&m)?.as_bytes())
}

/// Refuses an `--output` that peftkit must not write: an existing file (or link, or other
/// non-directory), or a non-empty directory without peftkit's marker. `what` names the flag's
/// command in the error.
pub fn check_output(output: &Path, what: &str) -> Result<()> {
    let Ok(meta) = output.symlink_metadata() else {
        return Ok(());
    };
    if !meta.is_dir() {
        bail!(
            "{what} --output {}: exists and is not a directory: refusing to replace it (choose another output)",
            output.display()
        );
    }
    let empty = std::fs::read_dir(output)
        .with_context(|| format!("reading {}", output.display()))?
        .next()
        .is_none();
    if !empty && read_marker(output).is_none() {
        bail!(
            "{what} --output {}: a non-empty directory that peftkit did not write (no {MARKER} file): refusing to write into it or replace it (choose another output, or empty it)",
            output.display()
        );
    }
    Ok(())
}

/// A run's directories: the `--output` it will become and the `.partial` one it works in.
#[derive(Debug, Clone)]
pub struct RunDir {
    output: PathBuf,
    work: PathBuf,
}

impl RunDir {
    /// The directories of a run with this `--output` (nothing is touched).
    pub fn new(output: &Path) -> Self {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        let parent = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self {
            output: output.to_path_buf(),
            work: parent.join(format!("{name}.partial")),
        }
    }

    /// Where the run writes until it is complete.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// Where the complete run ends up.
    pub fn output(&self) -> &Path {
        &self.output
    }

    /// Prepares the working directory (on the main process; the others only read it): refuses
    /// outputs peftkit did not write; a fresh run clears what an unfinished earlier run left in
    /// `.partial`; a resumed run continues in `.partial`, or in a copy of the complete output
    /// when there is no unfinished run.
    pub fn prepare(&self, resume: bool) -> Result<()> {
        check_output(&self.output, "the run's")?;
        if self.work.exists() {
            let empty = std::fs::read_dir(&self.work).is_ok_and(|mut d| d.next().is_none());
            let marker = read_marker(&self.work);
            if marker.is_none() && !empty {
                bail!(
                    "{}: exists and peftkit did not write it (no {MARKER} file): refusing to use it as the working directory of --output {} (move it away)",
                    self.work.display(),
                    self.output.display()
                );
            }
            // A complete run here is the previous output, swapped out by a run killed before
            // it removed it: nothing to resume.
            let unfinished = marker.is_some_and(|m| !m.complete);
            if resume && unfinished {
                return Ok(());
            }
            if unfinished {
                tracing::info!(dir = %self.work.display(), "removing an unfinished earlier run");
            }
            std::fs::remove_dir_all(&self.work)
                .with_context(|| format!("removing {}", self.work.display()))?;
        }
        std::fs::create_dir_all(&self.work)
            .with_context(|| format!("creating {}", self.work.display()))?;
        write_marker(&self.work, "run", false)?;
        if resume && read_marker(&self.output).is_some_and(|m| m.complete) {
            // Resuming a complete run (e.g. with more epochs) continues from a copy of it.
            copy_dir(&self.output, &self.work).with_context(|| {
                format!(
                    "copying {} to {} to resume it",
                    self.output.display(),
                    self.work.display()
                )
            })?;
        }
        Ok(())
    }

    /// A path inside the working directory as it will be once the run is complete (for paths
    /// recorded in the report and in saved adapters).
    pub fn public(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.work) {
            Ok(rest) => self.output.join(rest),
            Err(_) => path.to_path_buf(),
        }
    }

    /// Marks the run complete and puts it at `--output`, replacing a previous complete run in
    /// one step. Returns true when a previous run was replaced.
    pub fn finish(&self) -> Result<bool> {
        remove_temporaries(&self.work);
        remove_temporaries(&self.work.join("checkpoints"));
        write_marker(&self.work, "run", true)?;
        // Checked again: the output may have appeared while the run was under way.
        check_output(&self.output, "the run's")?;
        let replaced = self.output.exists();
        peftkit_models::replace_dir(&self.work, &self.output)
            .with_context(|| format!("moving {} into place", self.work.display()))?;
        Ok(replaced)
    }
}

/// Removes `.NAME.tmp-PID` / `.NAME.old-PID` entries (what killed atomic writes leave).
fn remove_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Copies `from` into `to`, all but the marker.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == MARKER {
            continue;
        }
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_peftkit_did_not_write_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("notes.txt");
        std::fs::write(&file, "mine").unwrap();
        let e = check_output(&file, "train").unwrap_err().to_string();
        assert!(e.contains("exists and is not a directory"), "{e}");
        let dir = tmp.path().join("photos");
        std::fs::create_dir(&dir).unwrap();
        check_output(&dir, "train").unwrap(); // empty: fine
        std::fs::write(dir.join("a.jpg"), "x").unwrap();
        let e = check_output(&dir, "train").unwrap_err().to_string();
        assert!(
            e.contains("a non-empty directory that peftkit did not write"),
            "{e}"
        );
        write_marker(&dir, "run", true).unwrap();
        check_output(&dir, "train").unwrap();
        assert_eq!(std::fs::read(dir.join("a.jpg")).unwrap(), b"x");
    }

    #[test]
    fn a_run_works_aside_and_replaces_the_previous_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let r = RunDir::new(&out);
        assert_eq!(r.work(), tmp.path().join("run.partial"));
        r.prepare(false).unwrap();
        std::fs::write(r.work().join("report.json"), "1").unwrap();
        std::fs::create_dir_all(r.work().join(".model.tmp-99999999")).unwrap();
        assert_eq!(r.public(&r.work().join("adapter")), out.join("adapter"));
        assert!(!r.finish().unwrap());
        assert_eq!(
            std::fs::read_to_string(out.join("report.json")).unwrap(),
            "1"
        );
        assert!(!out.join(".model.tmp-99999999").exists() && !r.work().exists());
        // A second run: the first stays whole until the second is complete.
        r.prepare(false).unwrap();
        std::fs::write(r.work().join("report.json"), "2").unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("report.json")).unwrap(),
            "1"
        );
        // Resuming continues in the unfinished run.
        r.prepare(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(r.work().join("report.json")).unwrap(),
            "2"
        );
        assert!(r.finish().unwrap());
        assert_eq!(
            std::fs::read_to_string(out.join("report.json")).unwrap(),
            "2"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
        // Resuming a complete run continues from a copy of it.
        r.prepare(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(r.work().join("report.json")).unwrap(),
            "2"
        );
        // A `.partial` directory of the user's is not removed.
        std::fs::remove_dir_all(r.work()).unwrap();
        std::fs::create_dir(r.work()).unwrap();
        std::fs::write(r.work().join("mine"), "x").unwrap();
        assert!(r
            .prepare(false)
            .unwrap_err()
            .to_string()
            .contains("peftkit did not write it"));
    }
}
