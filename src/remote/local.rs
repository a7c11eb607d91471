//! A local folder as a remote endpoint: for banks' own transfer agents that exchange files
//! through a directory, and for the shipped example. Paths are relative to the folder.

use super::{BoxFut, RemoteEndpoint, RemoteEntry, RemoteError, RemoteSession};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A folder on this machine.
pub struct LocalEndpoint {
    pub root: PathBuf,
}

impl RemoteEndpoint for LocalEndpoint {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }
    fn connect(&self) -> BoxFut<'_, Box<dyn RemoteSession>> {
        let root = self.root.clone();
        Box::pin(async move {
            if !root.is_dir() {
                return Err(RemoteError::Connect {
                    endpoint: format!("local:{}", root.display()),
                    detail: "the folder does not exist".into(),
                });
            }
            Ok(Box::new(LocalSession { root }) as Box<dyn RemoteSession>)
        })
    }
}

struct LocalSession {
    root: PathBuf,
}

impl LocalSession {
    /// Resolve a remote-style path inside the root; `..` and absolute escapes are refused.
    fn resolve(&self, path: &str) -> Result<PathBuf, RemoteError> {
        let mut out = self.root.clone();
        for part in Path::new(path.trim_start_matches('/')).components() {
            match part {
                std::path::Component::Normal(p) => out.push(p),
                std::path::Component::CurDir => {}
                _ => {
                    return Err(RemoteError::Op {
                        endpoint: format!("local:{}", self.root.display()),
                        op: "resolve",
                        path: path.to_string(),
                        detail: "path leaves the folder".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn op_err(&self, op: &'static str, path: &str, e: std::io::Error) -> RemoteError {
        if e.kind() == std::io::ErrorKind::NotFound {
            RemoteError::NotFound {
                endpoint: format!("local:{}", self.root.display()),
                path: path.to_string(),
            }
        } else {
            RemoteError::Op {
                endpoint: format!("local:{}", self.root.display()),
                op,
                path: path.to_string(),
                detail: e.to_string(),
            }
        }
    }
}

fn entry(name: String, m: &std::fs::Metadata) -> RemoteEntry {
    RemoteEntry {
        name,
        size: m.len(),
        mtime: m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64),
        is_dir: m.is_dir(),
    }
}

impl RemoteSession for LocalSession {
    fn list<'a>(&'a mut self, dir: &'a str) -> BoxFut<'a, Vec<RemoteEntry>> {
        Box::pin(async move {
            let p = self.resolve(dir)?;
            let rd = std::fs::read_dir(&p).map_err(|e| self.op_err("list", dir, e))?;
            let mut out = Vec::new();
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    out.push(entry(e.file_name().to_string_lossy().into_owned(), &m));
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }
    fn stat<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, Option<RemoteEntry>> {
        Box::pin(async move {
            let p = self.resolve(path)?;
            match std::fs::metadata(&p) {
                Ok(m) => Ok(Some(entry(
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    &m,
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.op_err("stat", path, e)),
            }
        })
    }
    fn get<'a>(&'a mut self, path: &'a str, to: &'a mut std::fs::File) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let p = self.resolve(path)?;
            let mut f = std::fs::File::open(&p).map_err(|e| self.op_err("open", path, e))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf).map_err(|e| self.op_err("read", path, e))?;
                if k == 0 {
                    break;
                }
                to.write_all(&buf[..k])?;
                n += k as u64;
            }
            Ok(n)
        })
    }
    fn put<'a>(
        &'a mut self,
        from: &'a mut (dyn std::io::Read + Send),
        path: &'a str,
    ) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let p = self.resolve(path)?;
            let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                return Err(self.op_err("create", path, std::io::ErrorKind::InvalidInput.into()));
            };
            // Durable writes go through the spool, like every other file sluss writes.
            let w = crate::spool::write_named(
                dir,
                &name.to_string_lossy(),
                from,
                crate::spool::MODE_DELIVERED,
            )
            .map_err(|e| self.op_err("write", path, e.source))?;
            crate::spool::fsync_dir(dir).map_err(|e| self.op_err("fsync", path, e.source))?;
            Ok(w.size)
        })
    }
    fn rename<'a>(&'a mut self, from: &'a str, to: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let a = self.resolve(from)?;
            let b = self.resolve(to)?;
            std::fs::rename(&a, &b).map_err(|e| self.op_err("rename", from, e))
        })
    }
    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let p = self.resolve(path)?;
            std::fs::remove_file(&p).map_err(|e| self.op_err("remove", path, e))
        })
    }
    fn close<'a>(&'a mut self) -> BoxFut<'a, ()> {
        Box::pin(async move { Ok(()) })
    }
}
