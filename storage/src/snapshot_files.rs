//! Snapshot data in files of their own, beside the sled database.
//!
//! A snapshot holds the whole registry (33 MB at 100 000 members). Kept as
//! one sled value, it was pulled into sled's page cache whenever it was
//! read (openraft reads the current snapshot at every start) and stayed
//! there: 23 MB of a restarted node's memory (measured with heaptrack and
//! `pmap`). So the data lives in `<data dir>/snapshots/<n>`, and sled keeps
//! only a small pointer (the snapshot's metadata and file name), written in
//! sled after the file is durable. The pointer is the commit point: a crash
//! before it leaves a file that nothing names, which the next start
//! removes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The folder of snapshot files inside a data dir.
pub fn folder(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Writes `data` durably as snapshot number `seq`; returns its file name.
pub fn write(folder: &Path, seq: u64, data: &[u8]) -> io::Result<String> {
    fs::create_dir_all(folder)?;
    let name = format!("{seq:020}");
    let tmp = folder.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, folder.join(&name))?;
    // The rename itself must be durable before sled may point at the name.
    File::open(folder)?.sync_all()?;
    Ok(name)
}

/// Reads snapshot file `name`.
pub fn read(folder: &Path, name: &str) -> io::Result<Vec<u8>> {
    fs::read(folder.join(name)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "snapshot file {} is missing or unreadable: {e}",
                folder.join(name).display()
            ),
        )
    })
}

/// Removes every file in the folder but `keep` (older snapshots, files a
/// crash left behind). Best effort: a file that cannot be removed now is
/// removed at a later snapshot or start.
pub fn remove_all_but(folder: &Path, keep: Option<&str>) {
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if Some(name.to_string_lossy().as_ref()) != keep {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder(dir.path());
        let first = write(&folder, 1, b"one").unwrap();
        let second = write(&folder, 2, b"two").unwrap();
        assert_eq!(read(&folder, &first).unwrap(), b"one");
        fs::write(folder.join("00000000000000000003.tmp"), b"half").unwrap();
        remove_all_but(&folder, Some(&second));
        let left: Vec<_> = fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![second.clone()]);
        assert_eq!(read(&folder, &second).unwrap(), b"two");
        let missing = read(&folder, &first).unwrap_err();
        assert!(missing.to_string().contains("snapshot file"), "{missing}");
    }
}
