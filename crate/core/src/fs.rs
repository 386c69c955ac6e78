//! Reading the files a person names (native code: the command line, the tests): regular files
//! only (a FIFO or a device such as `/dev/zero` would block forever or never end), their size
//! checked against a limit before a byte is read, and never more read than that size.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The bytes of `path`, a regular file of at most `limit` bytes; `what` names it in the error
/// for a larger one ("a text file may have at most 64 MB").
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(&shown, e))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{shown} is not a regular file (a folder, a FIFO or a device): give a file"
        )));
    }
    if meta.len() > limit {
        return Err(Error::Invalid(format!(
            "{shown} is {} bytes: {what} has at most {limit}",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .map_err(|e| Error::io(&shown, e))?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&shown, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::Invalid(format!(
            "{shown} grew past {limit} bytes while it was read"
        )));
    }
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = std::env::temp_dir().join(format!("webtune-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.txt");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(read_bounded(&file, 5, "a file").unwrap(), b"hello");
        let e = read_bounded(&file, 4, "a text file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a text file has at most 4"), "{e}");
        let e = read_bounded(&dir, 4, "x").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_bounded(Path::new("/dev/zero"), 1 << 30, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_bounded(&fifo, 1 << 30, "x").unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
