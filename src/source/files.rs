//! The manifests-folder source: the `*.yaml`, `*.yml` and `*.json` files
//! directly inside a folder (hidden files skipped, symlinks followed), kept as
//! a per-file cache so a change re-reads only the files that changed.
//!
//! A file that stops parsing keeps its last good objects and reports the
//! error; a deleted file removes its objects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{self, Manifests};
use crate::cluster::{Cluster, Object, ObjectRef};

/// A message about the folder's files, for a log line. Equal messages are
/// the same condition, so a caller can report each once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileReport {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for FileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

struct FileState {
    hash: [u8; 32],
    /// The objects of the last version that parsed.
    good: Manifests,
    /// Why the current version does not parse, if it does not.
    error: Option<String>,
}

/// The files of one folder and what they hold.
pub struct Folder {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

/// Largest manifest file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most objects read from a folder; the rest are reported and ignored.
pub const MAX_OBJECTS: usize = 250_000;

/// Whether a name is one of the manifest files the folder reads.
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
}

impl Folder {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Folder {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a path is a manifest file directly inside the folder.
    pub fn owns(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_manifest_name)
    }

    /// Re-reads the whole folder. Returns whether anything changed.
    pub fn rescan(&mut self) -> std::io::Result<bool> {
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if self.owns(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                present.insert(path);
            }
        }
        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.files.remove(&p);
            changed = true;
        }
        for p in present {
            changed |= self.refresh(&p);
        }
        Ok(changed)
    }

    /// Re-reads one path of the folder (created, changed, renamed away or
    /// deleted). Returns whether anything changed.
    pub fn refresh(&mut self, path: &Path) -> bool {
        if !self.owns(path) {
            return false;
        }
        let bytes = match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.len() > MAX_FILE_BYTES => Err(std::io::Error::other(
                format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
            )),
            Ok(m) if m.is_file() => std::fs::read(path),
            Ok(_) => Err(std::io::Error::other("not a regular file")),
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.files.remove(path).is_some();
            }
            Err(e) => {
                // Unreadable: keep what it held, say why.
                let message = format!("cannot be read: {e}");
                return match self.files.get_mut(path) {
                    Some(st) => {
                        let changed = st.error.as_deref() != Some(message.as_str());
                        st.error = Some(message);
                        changed
                    }
                    None => {
                        self.files.insert(
                            path.to_path_buf(),
                            FileState {
                                hash: [0; 32],
                                good: Manifests::default(),
                                error: Some(message),
                            },
                        );
                        true
                    }
                };
            }
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.files.get(path).is_some_and(|st| st.hash == hash) {
            return false;
        }
        let json = path.extension().is_some_and(|e| e == "json");
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| "is not UTF-8 text".to_string())
            .and_then(|text| manifest::parse(text, json).map_err(|e| e.to_string()));
        let previous = self.files.remove(path);
        let state = match parsed {
            Ok(good) => FileState {
                hash,
                good,
                error: None,
            },
            Err(e) => FileState {
                hash,
                good: previous.map(|p| p.good).unwrap_or_default(),
                error: Some(e),
            },
        };
        self.files.insert(path.to_path_buf(), state);
        true
    }

    /// The snapshot the files describe, and reports about them: parse errors,
    /// kinds not read, the same object in two files (the first file in name
    /// order wins).
    pub fn cluster(&self) -> (Cluster, Vec<FileReport>) {
        let mut cluster = Cluster::default();
        let mut reports = Vec::new();
        let mut seen: BTreeMap<ObjectRef, &Path> = BTreeMap::new();
        for (path, st) in &self.files {
            if let Some(e) = &st.error {
                let kept = if st.good.objects.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (serving the {} objects of its last good version)",
                        st.good.objects.len()
                    )
                };
                reports.push(FileReport {
                    path: path.clone(),
                    message: format!("{e}{kept}"),
                });
            }
            for i in &st.good.ignored {
                reports.push(FileReport {
                    path: path.clone(),
                    message: format!("ignored {i}: wicket does not read this kind"),
                });
            }
            for o in &st.good.objects {
                if seen.len() >= MAX_OBJECTS {
                    reports.push(FileReport {
                        path: path.clone(),
                        message: format!(
                            "ignored: the folder holds more than {MAX_OBJECTS} objects"
                        ),
                    });
                    break;
                }
                let r = o.object_ref();
                if let Some(first) = seen.get(&r) {
                    reports.push(FileReport {
                        path: path.clone(),
                        message: format!("ignored {r}: already defined in {}", first.display()),
                    });
                    continue;
                }
                seen.insert(r, path);
                cluster.insert(Object::clone(o));
            }
        }
        (cluster, reports)
    }

    /// Number of files read.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn keeps_last_good_objects_of_a_broken_file_and_forgets_deleted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, SVC).unwrap();
        std::fs::write(
            dir.path().join(".hidden.yaml"),
            SVC.replace("name: a", "name: h"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let mut folder = Folder::new(dir.path());
        assert!(folder.rescan().unwrap());
        assert_eq!(folder.cluster().0.services.len(), 1);

        std::fs::write(&f, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n").unwrap();
        assert!(folder.refresh(&f));
        let (c, reports) = folder.cluster();
        assert_eq!(c.services.len(), 1, "last good objects kept");
        assert_eq!(reports.len(), 1);
        assert!(
            reports[0].message.contains("not valid YAML"),
            "{}",
            reports[0]
        );

        assert!(!folder.refresh(&f), "unchanged content is not re-read");
        std::fs::remove_file(&f).unwrap();
        assert!(folder.refresh(&f));
        assert!(folder.cluster().0.services.is_empty());
    }

    #[test]
    fn duplicates_are_reported_and_the_first_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(dir.path().join("b.yml"), SVC.replace("80", "81")).unwrap();
        let mut folder = Folder::new(dir.path());
        folder.rescan().unwrap();
        let (c, reports) = folder.cluster();
        let svc = c.services.values().next().unwrap();
        assert_eq!(
            svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            80
        );
        assert!(
            reports[0].message.contains("already defined in"),
            "{}",
            reports[0]
        );
    }
}
