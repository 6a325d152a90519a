//! The manifests-folder source: the `*.yaml`, `*.yml` and `*.json` files
//! directly inside a folder (hidden files skipped, symlinks followed), kept as
//! a per-file cache so a change re-reads only the files that changed.
//!
//! A file that stops parsing keeps its last good objects and reports the
//! error; a deleted file removes its objects.

use std::collections::{BTreeMap, HashMap};
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

/// The files of one folder and what they hold.
pub struct Folder {
    dir: PathBuf,
    /// Keyed by file name.
    files: BTreeMap<String, FileState>,
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

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            inode: m.ino(),
        }
    }
}

struct FileState {
    stamp: Option<Stamp>,
    /// The file is a symlink (its target is not watched; see
    /// [`Folder::recheck_links`]).
    link: bool,
    hash: [u8; 32],
    /// The objects of the last version that parsed.
    good: Manifests,
    /// Why the current version does not parse, if it does not.
    error: Option<String>,
}

/// What reading one file found.
enum Read {
    Gone,
    Unreadable(String),
    /// The same content as before.
    Unchanged(Stamp),
    Parsed {
        stamp: Stamp,
        hash: [u8; 32],
        parsed: Result<Manifests, String>,
    },
}

/// Reads and parses a file, unless its hash says it did not change, and
/// says whether the path is a symlink. Pure apart from the reading, so
/// files can be read on several threads.
fn read(path: &Path, previous_hash: Option<[u8; 32]>) -> (Read, bool) {
    let link = std::fs::symlink_metadata(path);
    let is_link = link.as_ref().is_ok_and(|m| m.file_type().is_symlink());
    // A plain file's own metadata is what `stat` would say.
    let meta = match link {
        Ok(m) if !is_link => Ok(m),
        _ => std::fs::metadata(path),
    };
    (read_with(path, meta, previous_hash), is_link)
}

fn read_with(
    path: &Path,
    meta: std::io::Result<std::fs::Metadata>,
    previous_hash: Option<[u8; 32]>,
) -> Read {
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Gone,
        Err(e) => return Read::Unreadable(format!("cannot be read: {e}")),
    };
    if !meta.is_file() {
        return Read::Unreadable("cannot be read: not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Read::Unreadable(format!(
            "cannot be read: larger than {} MiB",
            MAX_FILE_BYTES >> 20
        ));
    }
    let stamp = Stamp::of(&meta);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Gone,
        Err(e) => return Read::Unreadable(format!("cannot be read: {e}")),
    };
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    if previous_hash == Some(hash) {
        return Read::Unchanged(stamp);
    }
    let json = path.extension().is_some_and(|e| e == "json");
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|_| "is not UTF-8 text".to_string())
        .and_then(|text| manifest::parse(text, json).map_err(|e| e.to_string()));
    Read::Parsed {
        stamp,
        hash,
        parsed,
    }
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

    /// The name of a manifest file directly inside the folder.
    fn name_of<'p>(&self, path: &'p Path) -> Option<&'p str> {
        if path.parent() != Some(self.dir.as_path()) {
            return None;
        }
        path.file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_manifest_name(n))
    }

    /// Whether a path is a manifest file directly inside the folder.
    pub fn owns(&self, path: &Path) -> bool {
        self.name_of(path).is_some()
    }

    /// Re-reads the whole folder: files whose size, time and inode did not
    /// change are not read again; the others are read and parsed on every
    /// core. Returns whether anything changed.
    pub fn rescan(&mut self) -> std::io::Result<bool> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str().filter(|n| is_manifest_name(n)) {
                names.push(name.to_string());
            }
        }
        // One `stat` per file (following symlinks), on every core: 10,000
        // files cost ~40 ms on one.
        let dir = &self.dir;
        let stamps = crate::parallel::map(&names, |name| {
            std::fs::metadata(dir.join(name))
                .ok()
                .filter(|m| m.is_file())
                .map(|m| Stamp::of(&m))
        });
        let present: BTreeMap<String, Stamp> = names
            .into_iter()
            .zip(stamps)
            .filter_map(|(name, stamp)| Some((name, stamp?)))
            .collect();
        let before = self.files.len();
        self.files.retain(|name, _| present.contains_key(name));
        let mut changed = self.files.len() != before;
        let stale: Vec<(String, Option<[u8; 32]>)> = present
            .into_iter()
            .filter(|(name, stamp)| {
                self.files
                    .get(name)
                    .is_none_or(|st| st.stamp != Some(*stamp))
            })
            .map(|(name, _)| {
                let hash = self.files.get(&name).map(|st| st.hash);
                (name, hash)
            })
            .collect();
        let results = crate::parallel::map(&stale, |(name, hash)| {
            (name.clone(), read(&dir.join(name), *hash))
        });
        for (name, (r, link)) in results {
            changed |= self.store(name, r, link);
        }
        Ok(changed)
    }

    /// Re-reads the files that are symlinks whose target changed. Watching
    /// the folder sees a symlink replaced, not its target edited (the
    /// target may be anywhere), so `serve` calls this on a timer; it costs
    /// a `stat` per symlink. Returns whether anything changed.
    pub fn recheck_links(&mut self) -> bool {
        let changed: Vec<String> = self
            .files
            .iter()
            .filter(|(name, st)| {
                st.link
                    && std::fs::metadata(self.dir.join(name))
                        .ok()
                        .map(|m| Stamp::of(&m))
                        != st.stamp
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut any = false;
        for name in changed {
            let path = self.dir.join(&name);
            any |= self.refresh(&path);
        }
        any
    }

    /// Whether any file of the folder is a symlink.
    pub fn has_links(&self) -> bool {
        self.files.values().any(|st| st.link)
    }

    /// Re-reads one path of the folder (created, changed, renamed away or
    /// deleted). Returns whether anything changed.
    pub fn refresh(&mut self, path: &Path) -> bool {
        let Some(name) = self.name_of(path).map(str::to_string) else {
            return false;
        };
        let hash = self.files.get(&name).map(|st| st.hash);
        let (r, link) = read(path, hash);
        self.store(name, r, link)
    }

    /// Records what reading a file found. Returns whether anything changed.
    fn store(&mut self, name: String, r: Read, link: bool) -> bool {
        let changed = self.store_read(&name, r);
        if let Some(st) = self.files.get_mut(&name) {
            st.link = link;
        }
        changed
    }

    fn store_read(&mut self, name: &str, r: Read) -> bool {
        let name = name.to_string();
        match r {
            Read::Gone => self.files.remove(&name).is_some(),
            Read::Unchanged(stamp) => {
                if let Some(st) = self.files.get_mut(&name) {
                    st.stamp = Some(stamp);
                }
                false
            }
            // Unreadable: keep what it held, say why.
            Read::Unreadable(message) => match self.files.get_mut(&name) {
                Some(st) => {
                    let changed = st.error.as_deref() != Some(message.as_str());
                    st.error = Some(message);
                    st.stamp = None;
                    changed
                }
                None => {
                    self.files.insert(
                        name,
                        FileState {
                            stamp: None,
                            link: false,
                            hash: [0; 32],
                            good: Manifests::default(),
                            error: Some(message),
                        },
                    );
                    true
                }
            },
            Read::Parsed {
                stamp,
                hash,
                parsed,
            } => {
                let previous = self.files.remove(&name);
                let state = match parsed {
                    Ok(good) => FileState {
                        stamp: Some(stamp),
                        link: false,
                        hash,
                        good,
                        error: None,
                    },
                    Err(e) => FileState {
                        stamp: Some(stamp),
                        link: false,
                        hash,
                        good: previous.map(|p| p.good).unwrap_or_default(),
                        error: Some(e),
                    },
                };
                self.files.insert(name, state);
                true
            }
        }
    }

    /// The snapshot the files describe, and reports about them: parse errors,
    /// kinds not read, the same object in two files (the first file in name
    /// order wins).
    pub fn cluster(&self) -> (Cluster, Vec<FileReport>) {
        let mut cluster = Cluster::default();
        let mut reports = Vec::new();
        let mut count = 0;
        // Which file defines each object first: built at the first object
        // defined twice, which is rare.
        let mut first_file: Option<HashMap<ObjectRef, &str>> = None;
        for (name, st) in &self.files {
            let path = || self.dir.join(name);
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
                    path: path(),
                    message: format!("{e}{kept}"),
                });
            }
            for i in &st.good.ignored {
                reports.push(FileReport {
                    path: path(),
                    message: format!("ignored {i}: wicket does not read this kind"),
                });
            }
            for o in &st.good.objects {
                if count >= MAX_OBJECTS {
                    reports.push(FileReport {
                        path: path(),
                        message: format!(
                            "ignored: the folder holds more than {MAX_OBJECTS} objects"
                        ),
                    });
                    break;
                }
                if cluster.insert_new(Object::clone(o)) {
                    count += 1;
                    continue;
                }
                let index = first_file.get_or_insert_with(|| {
                    let mut index = HashMap::new();
                    for (name, st) in &self.files {
                        for o in &st.good.objects {
                            index.entry(o.object_ref()).or_insert(name.as_str());
                        }
                    }
                    index
                });
                let r = o.object_ref();
                let first = index.get(&r).copied().unwrap_or(name.as_str());
                reports.push(FileReport {
                    path: path(),
                    message: format!(
                        "ignored {r}: already defined in {}",
                        self.dir.join(first).display()
                    ),
                });
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
