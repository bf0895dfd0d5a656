//! One instance per state file: an advisory lock held by the open file.
//!
//! The kernel drops the lock when the process ends, however it ends, so a lock left by a killed
//! process never blocks the next start. The pid written inside is only for the error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn acquire(path: &Path) -> Result<InstanceLock> {
        let io = |context: &'static str| {
            let path = path.to_path_buf();
            move |source| Error::Io { context, path, source }
        };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io("cannot open lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::AlreadyRunning { path: path.to_path_buf(), holder: if holder.is_empty() { "unknown".into() } else { holder.to_string() } });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(Error::Io { context: "cannot lock", path: path.to_path_buf(), source }),
        }
        file.set_len(0).map_err(io("cannot write lock file"))?;
        file.rewind().map_err(io("cannot write lock file"))?;
        write!(file, "{}", std::process::id()).map_err(io("cannot write lock file"))?;
        Ok(InstanceLock { _file: file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
