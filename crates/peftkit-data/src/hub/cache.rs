//! The hub cache as `huggingface_hub` lays it out, so that both find each other's downloads:
//!
//! ```text
//! {cache}/models--org--name/          (datasets--org--name/ for datasets)
//!     refs/main                       the commit `main` pointed to
//!     blobs/{etag}                    file contents, named by ETag (sha256 for LFS files)
//!     blobs/{etag}.incomplete         a download in progress, resumed from its length
//!     snapshots/{commit}/{file}       relative symbolic links to ../../blobs/{etag}
//! ```
//!
//! A blob appears under its final name only once complete and verified, and a snapshot entry only
//! once its blob is there (both by rename), so a failure at any point leaves no half file where
//! a reader would take it for whole.

use super::RepoKind;
use std::io;
use std::path::{Path, PathBuf};

/// One repository's directory in the cache.
#[derive(Debug, Clone)]
pub(crate) struct RepoCache {
    dir: PathBuf,
}

impl RepoCache {
    pub(crate) fn new(cache_dir: &Path, kind: RepoKind, id: &str) -> Self {
        let folder = format!("{}s--{}", kind, id.replace('/', "--"));
        Self {
            dir: cache_dir.join(folder),
        }
    }

    /// The commit a revision names: the content of `refs/{revision}`, or the revision itself
    /// (a commit hash).
    pub(crate) fn commit_of(&self, revision: &str) -> String {
        std::fs::read_to_string(self.dir.join("refs").join(revision))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| revision.to_string())
    }

    /// The snapshot directory of a revision, if cached.
    pub(crate) fn snapshot(&self, revision: &str) -> Option<PathBuf> {
        let dir = self.dir.join("snapshots").join(self.commit_of(revision));
        dir.is_dir().then_some(dir)
    }

    /// Where a file of a commit lives in the snapshot (whether or not it exists).
    pub(crate) fn snapshot_file(&self, commit: &str, file: &str) -> PathBuf {
        let mut p = self.dir.join("snapshots").join(commit);
        for part in file.split('/') {
            p.push(part);
        }
        p
    }

    pub(crate) fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub(crate) fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// Records that `revision` (a branch or tag) points at `commit`, atomically.
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> io::Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, commit)?;
        std::fs::rename(&tmp, &path)
    }

    /// Makes `snapshots/{commit}/{file}` point at the complete blob `etag` (a relative symbolic
    /// link, or a copy where links are not possible), replacing any entry atomically.
    pub(crate) fn link(&self, commit: &str, file: &str, etag: &str) -> io::Result<PathBuf> {
        let target = self.snapshot_file(commit, file);
        let parent = target.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&parent)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        // snapshots/{commit}/a/b -> ../../../blobs/{etag}
        let depth = file.split('/').count() + 1;
        let relative: PathBuf = std::iter::repeat_n("..", depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(etag);
        #[cfg(unix)]
        let linked = std::os::unix::fs::symlink(&relative, &tmp);
        #[cfg(not(unix))]
        let linked: io::Result<()> = Err(io::Error::other("no symbolic links"));
        if linked.is_err() {
            std::fs::copy(self.blob(etag), &tmp)?;
        }
        std::fs::rename(&tmp, &target)?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let tmp = tempfile::tempdir().unwrap();
        let c = RepoCache::new(tmp.path(), RepoKind::Dataset, "nyu-mll/glue");
        assert_eq!(
            c.snapshot_file("abc", "sst2/train.parquet"),
            tmp.path()
                .join("datasets--nyu-mll--glue/snapshots/abc/sst2/train.parquet")
        );
        assert!(c.snapshot("main").is_none());
        c.write_ref("main", "abc").unwrap();
        assert_eq!(c.commit_of("main"), "abc");
        assert_eq!(c.commit_of("0123"), "0123");
        std::fs::create_dir_all(c.blob("e1").parent().unwrap()).unwrap();
        std::fs::write(c.blob("e1"), b"data").unwrap();
        let linked = c.link("abc", "sst2/train.parquet", "e1").unwrap();
        assert_eq!(std::fs::read(&linked).unwrap(), b"data");
        assert_eq!(
            std::fs::read_link(&linked).unwrap(),
            Path::new("../../../blobs/e1")
        );
        assert_eq!(
            c.snapshot("main").unwrap(),
            tmp.path().join("datasets--nyu-mll--glue/snapshots/abc")
        );
        let m = RepoCache::new(tmp.path(), RepoKind::Model, "gpt2");
        assert!(m.blob("x").starts_with(tmp.path().join("models--gpt2")));
    }
}
