//! Reading the files a configuration names (the configuration itself, key files,
//! password files, CA bundles) with a size limit, refusing anything that is not a
//! regular file.
//!
//! A path such as `/dev/zero`, a FIFO or a directory must not make the daemon read
//! without end or block forever: the file type is checked before opening (opening some
//! devices has side effects of its own), the opened descriptor is checked again (the
//! path may have changed in between), and at most `limit + 1` bytes are ever read, so a
//! file whose size the kernel reports wrongly (`/proc`, a file still growing) is bounded
//! too. A symbolic link to a regular file is followed and accepted.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// How much of which kind of file may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    /// What the limit applies to, for messages ("secret files").
    pub what: &'static str,
}

/// The configuration file: a large deployment's is tens of kilobytes.
pub const CONFIG: Limit = Limit {
    bytes: 1024 * 1024,
    what: "configuration files",
};

/// Key, API key, password and wallet URI files: one line each.
pub const SECRET: Limit = Limit {
    bytes: 64 * 1024,
    what: "secret files",
};

/// PEM certificate bundles (`email.ca_file`); a full system bundle is ~220 KB.
pub const CERTIFICATES: Limit = Limit {
    bytes: 1024 * 1024,
    what: "certificate files",
};

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bytes % 1024 == 0 {
            let kib = self.bytes / 1024;
            if kib % 1024 == 0 {
                write!(f, "{} MiB", kib / 1024)
            } else {
                write!(f, "{kib} KiB")
            }
        } else {
            write!(f, "{} bytes", self.bytes)
        }
    }
}

/// Why a file was not read. Never carries the file's content.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// Not a regular file; the kind found ("a character device", "a FIFO", …).
    NotRegular(&'static str, Limit),
    TooLarge(Limit),
    /// The content is not UTF-8 text (only from [`read_text`]).
    NotText,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(kind, limit) => write!(
                f,
                "is {kind}, not a regular file ({} must be regular files of at most {limit})",
                limit.what
            ),
            ReadError::TooLarge(limit) => write!(
                f,
                "is larger than {limit} ({} bytes), the limit for {}",
                limit.bytes, limit.what
            ),
            ReadError::NotText => f.write_str("is not UTF-8 text"),
        }
    }
}

impl std::error::Error for ReadError {}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Reads a whole regular file of at most `limit.bytes` bytes.
pub fn read(path: &Path, limit: Limit) -> Result<Vec<u8>, ReadError> {
    // Checked before opening: opening a FIFO blocks until a writer comes, and opening a
    // device may act on it.
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.file_type()), limit));
    }
    let file = open_nonblocking(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.file_type()), limit));
    }
    if meta.len() > limit.bytes {
        return Err(ReadError::TooLarge(limit));
    }
    // The size reported is a hint only; the read itself is what is bounded.
    let hint = usize::try_from(meta.len()).unwrap_or(0);
    let mut out = Vec::with_capacity(hint.saturating_add(1));
    file.take(limit.bytes + 1)
        .read_to_end(&mut out)
        .map_err(ReadError::Io)?;
    if out.len() as u64 > limit.bytes {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(out)
}

/// [`read`], as UTF-8 text.
pub fn read_text(path: &Path, limit: Limit) -> Result<String, ReadError> {
    String::from_utf8(read(path, limit)?).map_err(|_| ReadError::NotText)
}

/// Opens for reading without blocking on a FIFO swapped in after the check and without
/// acquiring a terminal; neither flag changes how a regular file is read.
#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limit = Limit {
        bytes: 16,
        what: "test files",
    };

    #[test]
    fn limits_read_well() {
        assert_eq!(CONFIG.to_string(), "1 MiB");
        assert_eq!(SECRET.to_string(), "64 KiB");
        assert_eq!(SMALL.to_string(), "16 bytes");
    }

    #[test]
    fn regular_files_up_to_the_limit_and_links_to_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, [b'x'; 16]).expect("write");
        assert_eq!(read(&f, SMALL).expect("at the limit").len(), 16);
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        assert_eq!(read_text(&link, SMALL).expect("link"), "x".repeat(16));
        std::fs::write(&f, [b'x'; 17]).expect("write");
        let e = read(&f, SMALL).expect_err("over");
        assert!(e.to_string().contains("16 bytes"), "{e}");
    }

    #[test]
    fn devices_directories_and_fifos_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success());
        for (p, kind) in [
            (Path::new("/dev/zero"), "character device"),
            (dir.path(), "directory"),
            (fifo.as_path(), "FIFO"),
        ] {
            let e = read(p, SECRET).expect_err("refused");
            assert!(
                e.to_string().contains(kind) && e.to_string().contains("64 KiB"),
                "{e}"
            );
        }
    }
}
