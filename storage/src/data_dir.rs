//! Opening a node's data dir: one sled database with a format version and
//! the node's id. A data dir that is unusable stops the node with a clear
//! message, never a silent reset.

use std::path::{Path, PathBuf};

/// The on-disk format this build reads and writes. Bump it on any change of
/// the stored encoding; a node refuses a data dir of another version.
/// History: 2 stopped storing a session's member ids (rebuilt on load); 3
/// keeps snapshot data in files beside the database (see `snapshot_files`);
/// 4 keeps the applied state only in memory, durable through snapshots and
/// the log (see `state_machine`); 5 may store a removal's answer with its
/// index (`Outcome::Removed`) among a session's answers, which a build of
/// format 4 cannot read; 6 keeps the Raft log in segment files of its own
/// (`raft-log/`, see `log_file`) instead of sled's trees.
pub const FORMAT_VERSION: u32 = 6;

/// Older formats this build upgrades in place when it opens them. The state
/// machine moves a snapshot stored in sled (2) to a file and turns a state
/// stored member by member (2 and 3) into a snapshot when it opens, and
/// does so whenever it finds either, so a crash halfway is harmless. Format
/// 4 needs nothing but the new number: everything it holds reads as before.
/// The log store moves a log kept in sled (5 and before) into its segment
/// files whenever it finds one, in the same way.
const UPGRADES_FROM: &[u32] = &[2, 3, 4, 5];

const META_TREE: &str = "meta";
const FORMAT_KEY: &str = "format_version";
const NODE_ID_KEY: &str = "node_id";
/// Set once the Raft log's folder was created: a data dir that has it but
/// no log lost its log, and must not start as if new.
const RAFT_LOG_KEY: &str = "raft_log_created";

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path exists and is not a directory.
    #[error("data dir {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The directory cannot be created or written.
    #[error("data dir {path} cannot be used: {source}")]
    Io {
        /// The data dir.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Another process holds the database open.
    #[error("data dir {0} is in use by another process (is another fuddle-node running on it?)")]
    Locked(PathBuf),
    /// sled found corruption.
    #[error(
        "data dir {path} is corrupt: {detail}; restore it from a backup or remove it to start this node afresh under a new id"
    )]
    Corrupt {
        /// The data dir.
        path: PathBuf,
        /// What sled said.
        detail: String,
    },
    /// The database was written by another format version, or is not ours.
    #[error("data dir {path} has format {found}, this build reads format {FORMAT_VERSION}")]
    UnknownFormat {
        /// The data dir.
        path: PathBuf,
        /// The version found (or a description).
        found: String,
    },
    /// Any other sled error.
    #[error("data dir {path}: {detail}")]
    Other {
        /// The data dir.
        path: PathBuf,
        /// What sled said.
        detail: String,
    },
}

/// An open data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The sled database holding the format, the node id and the snapshot
    /// pointer.
    pub db: sled::Db,
    /// sled's data file, synced after each flush (see `flush`).
    pub(crate) db_file: std::sync::Arc<std::fs::File>,
    /// Where it is, for messages.
    pub path: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed) the data dir at `path`, with a sled cache
    /// of `cache_bytes` (sled's default of 1 GiB is too much for a registry).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<DataDir, OpenError> {
        let path = path.to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(OpenError::NotADirectory(path));
        }
        std::fs::create_dir_all(&path).map_err(|source| OpenError::Io {
            path: path.clone(),
            source,
        })?;
        remove_unfinished_sled_snapshots(&path.join("db"));
        let marker = read_marker(&path)?;
        let config = sled::Config::new()
            .path(path.join("db"))
            .cache_capacity(cache_bytes)
            // Durability comes from flushes at the right points, not from
            // sled's background flusher, which could also deadlock with
            // batches (see `gate`).
            .flush_every_ms(None);
        // sled's I/O threads may still hold a database closed a moment ago
        // in this process (a node restarted in place): its lock is then
        // released within milliseconds. Another process holding it is
        // reported after this short wait.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match config.open().map_err(|e| classify(&path, e)) {
                Err(OpenError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let db_file =
            std::fs::File::open(path.join("db").join("db")).map_err(|source| OpenError::Io {
                path: path.clone(),
                source,
            })?;
        let dir = DataDir {
            db,
            db_file: std::sync::Arc::new(db_file),
            path,
        };
        dir.check_format(marker)?;
        match (marker, dir.node_id()?) {
            (Some(m), Some(id)) if m != id => {
                return Err(dir.damaged(format!(
                    "its marker names node {m} but its database node {id}"
                )));
            }
            (Some(m), None) => {
                return Err(dir.damaged(format!(
                    "its marker names node {m} but its database has no node id"
                )));
            }
            // A data dir from before markers existed gets one now.
            (None, Some(id)) => write_marker(&dir.path, id)?,
            _ => {}
        }
        Ok(dir)
    }

    fn damaged(&self, why: String) -> OpenError {
        OpenError::Corrupt {
            path: self.path.clone(),
            detail: why,
        }
    }

    fn meta(&self) -> Result<sled::Tree, OpenError> {
        self.db
            .open_tree(META_TREE)
            .map_err(|e| classify(&self.path, e))
    }

    fn check_format(&self, marker: Option<u64>) -> Result<(), OpenError> {
        let meta = self.meta()?;
        match meta.get(FORMAT_KEY).map_err(|e| classify(&self.path, e))? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| OpenError::UnknownFormat {
                        path: self.path.clone(),
                        found: format!("unreadable ({} bytes)", v.len()),
                    })?;
                if UPGRADES_FROM.contains(&found) {
                    meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                        .map_err(|e| classify(&self.path, e))?;
                    self.flush_durably()?;
                } else if found != FORMAT_VERSION {
                    return Err(OpenError::UnknownFormat {
                        path: self.path.clone(),
                        found: found.to_string(),
                    });
                }
            }
            None if marker.is_some() => {
                // sled opens a truncated or garbled database as a new, empty
                // one; the marker outside it says this data dir held a node.
                return Err(self.damaged(
                    "its database has lost its contents (the marker file says a node lived here)"
                        .into(),
                ));
            }
            None => {
                // A database with data but no version is not ours.
                let names = self.db.tree_names();
                let foreign = names.iter().any(|n| {
                    n.as_ref() != b"__sled__default" && n.as_ref() != META_TREE.as_bytes()
                }) || !self.db.is_empty();
                if foreign {
                    return Err(OpenError::UnknownFormat {
                        path: self.path.clone(),
                        found: "none (not a Fuddle data dir)".into(),
                    });
                }
                meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| classify(&self.path, e))?;
                self.flush_durably()?;
            }
        }
        Ok(())
    }

    /// Whether this data dir's Raft log was ever created.
    pub fn raft_log_created(&self) -> Result<bool, OpenError> {
        let meta = self.meta()?;
        meta.contains_key(RAFT_LOG_KEY)
            .map_err(|e| classify(&self.path, e))
    }

    /// Records, durably, that the Raft log was created.
    pub fn mark_raft_log_created(&self) -> Result<(), OpenError> {
        let meta = self.meta()?;
        meta.insert(RAFT_LOG_KEY, &[1])
            .map_err(|e| classify(&self.path, e))?;
        self.flush_durably()
    }

    /// Flushes sled and syncs its data file (see `flush`), from
    /// synchronous code.
    pub(crate) fn flush_durably(&self) -> Result<(), OpenError> {
        let _gate = crate::gate::enter_blocking();
        crate::flush::flush_blocking(&self.db, &self.db_file).map_err(|source| OpenError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The node id kept in this data dir, if one was saved.
    pub fn node_id(&self) -> Result<Option<u64>, OpenError> {
        let meta = self.meta()?;
        let value = meta.get(NODE_ID_KEY).map_err(|e| classify(&self.path, e))?;
        Ok(value.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes)))
    }

    /// Saves the node id durably. Called once, on the node's first start,
    /// before anything else is written.
    pub fn set_node_id(&self, id: u64) -> Result<(), OpenError> {
        let meta = self.meta()?;
        meta.insert(NODE_ID_KEY, &id.to_be_bytes())
            .map_err(|e| classify(&self.path, e))?;
        self.flush_durably()?;
        write_marker(&self.path, id)
    }
}

/// The file beside the database that records, once and durably, that this
/// data dir holds node N. sled 0.34 opens a database that was truncated or
/// overwritten as a new, empty one; without this marker a damaged data dir
/// would silently start afresh.
const MARKER_FILE: &str = "FUDDLE_NODE";

fn read_marker(dir: &Path) -> Result<Option<u64>, OpenError> {
    let file = dir.join(MARKER_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("node "))
            .and_then(|id| id.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| OpenError::Corrupt {
                path: dir.to_path_buf(),
                detail: format!("{} is unreadable", file.display()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OpenError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn write_marker(dir: &Path, id: u64) -> Result<(), OpenError> {
    use std::io::Write;
    let io = |source| OpenError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    writeln!(file, "fuddle data dir\nformat {FORMAT_VERSION}\nnode {id}").map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(MARKER_FILE)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// sled writes a snapshot of its page table to `snap.*.generating` and
/// renames it when done; a crash (or a full disk) can leave the unfinished
/// file behind, which sled then takes for corruption. It is never needed.
fn remove_unfinished_sled_snapshots(db: &Path) {
    let Ok(entries) = std::fs::read_dir(db) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn classify(path: &Path, e: sled::Error) -> OpenError {
    let path = path.to_path_buf();
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            OpenError::Locked(path)
        }
        sled::Error::Io(source) => OpenError::Io { path, source },
        sled::Error::Corruption { .. } => OpenError::Corrupt {
            path,
            detail: e.to_string(),
        },
        other => OpenError::Other {
            path,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_node_id() {
        let dir = tempfile::tempdir().unwrap();
        {
            let d = DataDir::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(d.node_id().unwrap(), None);
            d.set_node_id(42).unwrap();
        }
        let d = DataDir::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(d.node_id().unwrap(), Some(42));
    }

    #[test]
    fn refuses_a_data_dir_whose_database_lost_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        {
            let d = DataDir::open(dir.path(), 1 << 20).unwrap();
            d.set_node_id(7).unwrap();
        }
        // sled would open an emptied database as a new one.
        std::fs::remove_dir_all(dir.path().join("db")).unwrap();
        let err = DataDir::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("lost its contents"), "{err}");
    }

    #[test]
    fn removes_unfinished_sled_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        {
            DataDir::open(dir.path(), 1 << 20)
                .unwrap()
                .set_node_id(7)
                .unwrap();
        }
        let leftover = dir.path().join("db").join("snap.00000001.generating");
        std::fs::write(&leftover, b"").unwrap();
        let d = DataDir::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(d.node_id().unwrap(), Some(7));
        assert!(!leftover.exists());
    }

    #[test]
    fn refuses_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDir::open(dir.path(), 1 << 20).unwrap();
        let err = DataDir::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, OpenError::Locked(_)), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn refuses_a_file_and_another_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            DataDir::open(&file, 1 << 20).unwrap_err(),
            OpenError::NotADirectory(_)
        ));
        {
            let d = DataDir::open(dir.path(), 1 << 20).unwrap();
            d.meta()
                .unwrap()
                .insert(FORMAT_KEY, &99u32.to_be_bytes())
                .unwrap();
            d.db.flush().unwrap();
        }
        let err = DataDir::open(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("format 99"), "{err}");
    }
}
