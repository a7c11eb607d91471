//! The spool: the only code in sluss that creates, renames, links and fsyncs files.
//!
//! Every durable write follows one discipline — write a temporary file in the target
//! directory, fsync it, move it into place, fsync the directory — so that after a crash a file
//! is either wholly there under its final name or not there at all. Nothing here decides
//! anything about payments; callers say what to write and where.
//!
//! Moves into place never replace an existing file: `renameat2(RENAME_NOREPLACE)`, or `link` +
//! `unlink` where the file system lacks it. Both fail with `AlreadyExists` instead of silently
//! overwriting, which is what a delivery into a bank's folder needs (a name collision must be
//! an error, not a lost file).

use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Copy buffer: large enough to keep syscalls off the profile, small enough to be irrelevant
/// to memory use with many concurrent transfers.
const COPY_BUF: usize = 256 * 1024;
/// A copy starts with this much buffer and doubles it (up to [`COPY_BUF`]) each time a read
/// fills it: most payment files are a few KiB, and a zeroed 256 KiB buffer per file (its
/// page faults and memset) cost as much as writing the file.
const FIRST_COPY_BUF: usize = 16 * 1024;

/// Owner-only permissions for secrets (keys) and for payment files at rest.
pub const MODE_SECRET: u32 = 0o600;
/// Payment files handed to a destination folder: owner read/write, group read (a bank's
/// transfer agent commonly runs as another user in a shared group).
pub const MODE_DELIVERED: u32 = 0o640;

/// What a durable copy produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub size: u64,
    /// Lower-case hex SHA-256 of the bytes written.
    pub sha256: String,
}

/// An error with the path it concerns, so the operator sees which file or folder failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct SpoolError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl SpoolError {
    /// The same error again, for each of several files one failed operation concerns (an
    /// `io::Error` cannot be cloned).
    pub fn duplicate(&self) -> SpoolError {
        SpoolError {
            op: self.op,
            path: self.path.clone(),
            source: io::Error::new(self.source.kind(), self.source.to_string()),
        }
    }

    fn new(op: &'static str, path: &Path, source: io::Error) -> SpoolError {
        SpoolError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the disk (or quota) is full: callers refuse the file and keep running.
    pub fn is_disk_full(&self) -> bool {
        // ENOSPC = 28, EDQUOT = 122 on Linux.
        matches!(self.source.raw_os_error(), Some(28) | Some(122))
    }

    /// True when the target name already existed (a no-replace move refused to overwrite).
    pub fn is_already_exists(&self) -> bool {
        self.source.kind() == io::ErrorKind::AlreadyExists
    }
}

type Result<T> = std::result::Result<T, SpoolError>;

/// Create a directory (and parents) and make the new entries durable.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| SpoolError::new("create directory", dir, e))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// fsync a directory, making the names in it (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| SpoolError::new("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| SpoolError::new("fsync directory", dir, e))
}

/// A fresh random token for temporary and stored file names (no collisions across processes).
pub fn random_token() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the OS random source is unavailable");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Copy `reader` into a new temporary file in `dir`, hashing as it goes, and fsync the file.
/// The temporary name starts with `.` and ends in `.sluss-tmp` so that folder watchers and
/// banks' agents ignore it. The caller moves it into place with [`commit_temp`] or removes it
/// with [`discard`]. The directory is not yet fsynced: the name is not durable until commit.
pub fn write_temp<R: Read>(dir: &Path, reader: R, mode: u32) -> Result<Written> {
    ensure_dir(dir)?;
    let path = dir.join(format!(".{}.sluss-tmp", random_token()));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| SpoolError::new("create", &path, e))?;
    let written = fill(f, &path, reader);
    if written.is_err() {
        // Never leave a partial temporary file behind (a full disk must not fill up further).
        let _ = fs::remove_file(&path);
    }
    written
}

/// Copy `reader` into the open file `f` at `path`, hashing, then fsync it.
fn fill<R: Read>(f: File, path: &Path, reader: R) -> Result<Written> {
    let (w, f) = fill_unsynced(f, path, reader)?;
    f.sync_all()
        .map_err(|e| SpoolError::new("fsync", path, e))?;
    Ok(w)
}

/// [`fill`] without the fsync: the caller makes the file durable (e.g. with
/// [`sync_batch`], beside others).
fn fill_unsynced<R: Read>(mut f: File, path: &Path, mut reader: R) -> Result<(Written, File)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; FIRST_COPY_BUF];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SpoolError::new("read source for", path, e)),
        };
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .map_err(|e| SpoolError::new("write", path, e))?;
        size += n as u64;
        if n == buf.len() && buf.len() < COPY_BUF {
            buf.resize((buf.len() * 2).min(COPY_BUF), 0);
        }
    }
    Ok((
        Written {
            path: path.to_path_buf(),
            size,
            sha256: hex_lower(&hasher.finalize()),
        },
        f,
    ))
}

/// Like [`write_temp`], but the file is locked (`flock`, exclusive) from creation until the
/// returned handle is dropped — also across renames, since the lock belongs to the open file.
/// A crash releases it. Start-up sweeps use [`is_locked`] to tell a crashed writer's leftovers
/// from another live process's file in progress (e.g. a `sluss ingest` running beside the
/// daemon), which they must not touch.
pub fn write_temp_locked<R: Read>(dir: &Path, reader: R, mode: u32) -> Result<(Written, File)> {
    let (path, f, lock) = create_locked(dir, mode)?;
    match fill(f, &path, reader) {
        Ok(w) => Ok((w, lock)),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Create an empty, locked temporary file in `dir` for a writer that fills it at arbitrary
/// offsets (an SFTP upload). Returns its path, a handle for writing and the lock handle.
/// Created under a name sweeps ignore, locked, and only then given its `.sluss-tmp` name: a
/// sweep can never see the file unlocked while its writer is alive.
pub fn create_locked(dir: &Path, mode: u32) -> Result<(PathBuf, File, File)> {
    ensure_dir(dir)?;
    let token = random_token();
    let fresh = dir.join(format!(".{token}.sluss-new"));
    let path = dir.join(format!(".{token}.sluss-tmp"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&fresh)
        .map_err(|e| SpoolError::new("create", &fresh, e))?;
    let locked = f
        .lock()
        .and_then(|()| f.try_clone())
        .and_then(|l| fs::rename(&fresh, &path).map(|()| l));
    match locked {
        Ok(lock) => Ok((path, f, lock)),
        Err(e) => {
            let _ = fs::remove_file(&fresh);
            Err(SpoolError::new("lock", &fresh, e))
        }
    }
}

/// Describe a file written through [`create_locked`]: size, and SHA-256 (computed by reading
/// it back unless the writer already knows it). Not durable yet: see [`sync_batch`].
pub fn describe_upload(path: &Path, file: &File, sha256: Option<String>) -> Result<Written> {
    let size = file
        .metadata()
        .map_err(|e| SpoolError::new("stat", path, e))?
        .len();
    let sha256 = match sha256 {
        Some(h) => h,
        None => sha256_file(path)?,
    };
    Ok(Written {
        path: path.to_path_buf(),
        size,
        sha256,
    })
}

/// The whole content of an open file if it is at most `max` bytes (`None` if larger), read
/// at offset 0 through the handle (its position is not used).
pub fn read_small(path: &Path, file: &File, max: u64) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt;
    let size = file
        .metadata()
        .map_err(|e| SpoolError::new("stat", path, e))?
        .len();
    if size > max {
        return Ok(None);
    }
    let mut data = vec![0u8; size as usize];
    file.read_exact_at(&mut data, 0)
        .map_err(|e| SpoolError::new("read", path, e))?;
    Ok(Some(data))
}

/// SHA-256 of bytes in memory, lower-case hex (as [`sha256_file`] gives for a file).
pub fn sha256_hex(data: &[u8]) -> String {
    hex_lower(&Sha256::digest(data))
}

/// Make a batch durable: the contents of `files` (written, not yet fsynced, already moved
/// into `dir`) and the new names in `dir`. The directory's fsync runs beside the files'
/// instead of after them: each fsync ends in a disk cache flush (~0.2–0.4 ms on the VMs
/// measured), concurrent flushes are merged by the block layer, and a receipt waits for
/// this. Nothing references these files until the caller's ledger commit, which must come
/// after this returns: a crash before then leaves unreferenced files for the start-up sweep.
/// Returns the directory's result and one result per file.
pub fn sync_batch(dir: &Path, files: &[(&Path, &File)]) -> (Result<()>, Vec<Result<()>>) {
    if files.is_empty() {
        return (fsync_dir(dir), Vec::new());
    }
    // Up to SYNC_THREADS fsyncs in flight at once, the folder's among them: one after the
    // other, a batch of ten files paid ten flushes; side by side they share a few.
    let per = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(p, f)| f.sync_all().map_err(|e| SpoolError::new("fsync", p, e)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let d = fsync_dir(dir);
        let mut out = Vec::with_capacity(files.len());
        for (w, chunk) in workers.into_iter().zip(files.chunks(per)) {
            match w.join() {
                Ok(r) => out.extend(r),
                Err(_) => out.extend(chunk.iter().map(|(p, _)| {
                    Err(SpoolError::new(
                        "fsync",
                        p,
                        std::io::Error::other("fsync thread failed"),
                    ))
                })),
            }
        }
        (d, out)
    })
}

/// Make everything written on `dir`'s file system durable with one `syncfs(2)`: the contents
/// and names of all of a batch's new files in that folder at once, with one disk flush where
/// [`sync_batch`] would pay up to one per file. It also writes whatever else is pending on
/// that file system, so callers use it where waiting longer is harmless (deliveries, never a
/// receipt). Writeback errors anywhere on the file system since `dir` was opened are
/// reported (Linux ≥ 5.8): a false alarm makes the caller retry, never lose a file.
pub fn sync_filesystem_of(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| SpoolError::new("open directory", dir, e))?;
    nix::unistd::syncfs(&d)
        .map_err(|e| SpoolError::new("syncfs", dir, io::Error::from_raw_os_error(e as i32)))
}

/// How many fsyncs [`sync_batch`] runs at once (plus the folder's).
const SYNC_THREADS: usize = 8;

/// True when another open file holds a lock on `path` (a live writer is still working on it).
pub fn is_locked(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Create `dir/name` (which must not exist), fill it from `reader`, hashing, and fsync the
/// file. Used for deterministic temporary names a recovery can look for (delivery temps).
pub fn write_named<R: Read>(dir: &Path, name: &str, reader: R, mode: u32) -> Result<Written> {
    let (w, f) = write_named_unsynced(dir, name, reader, mode)?;
    if let Err(e) = f.sync_all() {
        let _ = fs::remove_file(&w.path);
        return Err(SpoolError::new("fsync", &w.path, e));
    }
    Ok(w)
}

/// [`write_named`] without the fsync: returns the open file, which the caller makes durable
/// with [`sync_batch`] together with the other files of its batch and their folder.
pub fn write_named_unsynced<R: Read>(
    dir: &Path,
    name: &str,
    reader: R,
    mode: u32,
) -> Result<(Written, File)> {
    ensure_dir(dir)?;
    let path = dir.join(name);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| SpoolError::new("create", &path, e))?;
    let r = fill_unsynced(f, &path, reader);
    if r.is_err() {
        let _ = fs::remove_file(&path);
    }
    r
}

/// Create a temporary file in `dir` and let `produce` write into it (for encoders that are
/// writers, such as age encryption); the file is fsynced after `produce` returns Ok.
pub fn write_temp_with(
    dir: &Path,
    mode: u32,
    produce: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<PathBuf> {
    ensure_dir(dir)?;
    let path = dir.join(format!(".{}.sluss-tmp", random_token()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| SpoolError::new("create", &path, e))?;
    let r = produce(&mut f)
        .map_err(|e| SpoolError::new("write", &path, e))
        .and_then(|()| f.sync_all().map_err(|e| SpoolError::new("fsync", &path, e)));
    match r {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Move a fsynced temporary file to `dest` without ever replacing an existing file, then
/// fsync the destination directory (and the source directory if it differs).
/// `AlreadyExists` is reported as such; the temporary file is then left for the caller.
pub fn commit_temp(temp: &Path, dest: &Path) -> Result<()> {
    let dest_dir = parent_of(dest);
    ensure_dir(dest_dir)?;
    move_into_place(temp, dest)?;
    fsync_dir(dest_dir)?;
    let temp_dir = parent_of(temp);
    if temp_dir != dest_dir {
        fsync_dir(temp_dir)?;
    }
    Ok(())
}

/// Rename `from` to `to` without fsyncing: for moves to fresh random names whose
/// durability the caller makes with one [`fsync_dir`] for a whole batch.
pub fn rename_no_sync(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| SpoolError::new("rename into", to, e))
}

/// Move `temp` to `dest` refusing to replace an existing file, without fsyncing: for batches
/// that make all their new names durable with one [`fsync_dir`] afterwards.
///
/// One `renameat2(RENAME_NOREPLACE)`: a single directory change, atomic, so a crash leaves
/// either name, never both. File systems without it (some network and FUSE ones) get `link`
/// then `unlink`, where a crash between the two can leave both names; recovery treats a
/// final name with the right size and hash as delivered either way.
pub fn move_into_place(temp: &Path, dest: &Path) -> Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(
            AT_FDCWD,
            temp,
            AT_FDCWD,
            dest,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => return Ok(()),
            // Not supported here: fall back to link + unlink below.
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {}
            Err(e) => {
                return Err(SpoolError::new(
                    "move into place",
                    dest,
                    io::Error::from_raw_os_error(e as i32),
                ));
            }
        }
    }
    fs::hard_link(temp, dest).map_err(|e| SpoolError::new("link into place", dest, e))?;
    fs::remove_file(temp).map_err(|e| SpoolError::new("remove temporary", temp, e))
}

/// Durably rename within or across directories of one file system, replacing nothing.
/// (Same as [`commit_temp`]; named for moves of already-final files, e.g. into quarantine.)
pub fn move_file(from: &Path, to: &Path) -> Result<()> {
    commit_temp(from, to)
}

/// Copy `src` into `dest_dir` under `final_name` durably: temp file, fsync, no-replace move,
/// directory fsync. Returns what was written.
pub fn copy_into(src: &Path, dest_dir: &Path, final_name: &str, mode: u32) -> Result<Written> {
    let f = File::open(src).map_err(|e| SpoolError::new("open", src, e))?;
    let w = write_temp(dest_dir, f, mode)?;
    let dest = dest_dir.join(final_name);
    if let Err(e) = commit_temp(&w.path, &dest) {
        let _ = fs::remove_file(&w.path);
        return Err(e);
    }
    Ok(Written { path: dest, ..w })
}

/// Write a small file (a key, a note) durably, refusing to replace an existing one.
pub fn write_new_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let w = write_temp(parent_of(dest), bytes, mode)?;
    if let Err(e) = commit_temp(&w.path, dest) {
        let _ = fs::remove_file(&w.path);
        return Err(e);
    }
    // `create_new` + mode is subject to the umask; set the mode explicitly so a key file is
    // exactly owner-only whatever the umask of the operator's shell.
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .map_err(|e| SpoolError::new("set permissions of", dest, e))?;
    Ok(())
}

/// Remove a file durably (fsync its directory). A file already gone is not an error.
pub fn discard(path: &Path) -> Result<()> {
    match remove_no_sync(path)? {
        Some(dir) => fsync_dir(dir),
        None => Ok(()),
    }
}

/// Remove a file WITHOUT making the removal durable: for batches that make all their
/// removals durable with one [`fsync_dir`] afterwards. Returns the folder to fsync, or `None`
/// when the file was already gone (nothing to make durable). Until that fsync, a crash may
/// bring the file back; callers must treat a reappearing file as harmless.
pub fn remove_no_sync(path: &Path) -> Result<Option<&Path>> {
    match fs::remove_file(path) {
        Ok(()) => Ok(Some(parent_of(path))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::new("remove", path, e)),
    }
}

/// Size of a file, or `None` if it does not exist.
pub fn size_of(path: &Path) -> Result<Option<u64>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::new("stat", path, e)),
    }
}

/// Lower-case hex SHA-256 of a whole file, streaming.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| SpoolError::new("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| SpoolError::new("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex_lower(&hasher.finalize()))
}

/// Temporary files this module left behind in `dir` (after a crash): `.*.sluss-tmp`.
pub fn stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".sluss-tmp"))
        })
        .collect()
}

fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

pub fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_into_place_moves_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (temp, dest) = (dir.path().join(".a.sluss-tmp"), dir.path().join("a.dat"));
        fs::write(&temp, b"first").unwrap();
        move_into_place(&temp, &dest).unwrap();
        assert!(!temp.exists(), "the temporary name is gone");
        assert_eq!(fs::read(&dest).unwrap(), b"first");

        fs::write(&temp, b"second").unwrap();
        let e = move_into_place(&temp, &dest).unwrap_err();
        assert!(e.is_already_exists(), "{e}");
        assert_eq!(fs::read(&dest).unwrap(), b"first", "never replaced");
        assert_eq!(fs::read(&temp).unwrap(), b"second", "left for the caller");
    }

    #[test]
    fn copy_is_durable_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.txt");
        fs::write(&src, b"abc\r\n\xc4").unwrap();
        let out = dir.path().join("out");
        let w = copy_into(&src, &out, "final.txt", MODE_DELIVERED).unwrap();
        assert_eq!(fs::read(&w.path).unwrap(), b"abc\r\n\xc4");
        assert_eq!(w.size, 6);
        assert_eq!(w.sha256, sha256_file(&src).unwrap());
        assert!(stale_temps(&out).is_empty());
        let again = copy_into(&src, &out, "final.txt", MODE_DELIVERED).unwrap_err();
        assert!(again.is_already_exists(), "{again}");
        assert!(
            stale_temps(&out).is_empty(),
            "a refused move leaves no temp file"
        );
    }

    #[test]
    fn new_secret_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_new_file(&p, b"secret\n", MODE_SECRET).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_new_file(&p, b"x", MODE_SECRET).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"secret\n");
    }

    #[test]
    fn sync_filesystem_of_a_folder_or_says_which_folder_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _f) = write_named_unsynced(dir.path(), "a", &b"payment"[..], 0o600).unwrap();
        assert_eq!(w.size, 7);
        sync_filesystem_of(dir.path()).unwrap();
        let gone = dir.path().join("no-such-folder");
        let e = sync_filesystem_of(&gone).unwrap_err();
        assert!(e.to_string().contains("no-such-folder"), "{e}");
    }

    #[test]
    fn failed_source_leaves_nothing() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("peer went away"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(write_temp(dir.path(), Broken, MODE_SECRET).is_err());
        assert!(stale_temps(dir.path()).is_empty());
    }
}
