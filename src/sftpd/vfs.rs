//! The virtual tree every account sees: `/`, `/upload`, `/download`, and single file names
//! directly inside the two folders. Paths are resolved lexically here, never by the file
//! system, so no `..`, symlink or odd name can reach anything else: a path that leaves the
//! tree is an [`Escape`], one that names nothing in it is `NotFound`.

/// Longest file name accepted (the common file-system limit).
pub const MAX_NAME_LEN: usize = 255;

/// A place in an account's virtual tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    UploadDir,
    DownloadDir,
    Upload(String),
    Download(String),
}

impl Node {
    /// The canonical virtual path.
    pub fn path(&self) -> String {
        match self {
            Node::Root => "/".into(),
            Node::UploadDir => "/upload".into(),
            Node::DownloadDir => "/download".into(),
            Node::Upload(n) => format!("/upload/{n}"),
            Node::Download(n) => format!("/download/{n}"),
        }
    }
}

/// Why a path does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Leaves the account's root (`..` above `/`) or uses a name that could mean something
    /// else on disk: refused and logged.
    Escape(String),
    /// Inside the tree but nothing is there (`/etc`, `/upload/a/b`).
    NotFound,
}

/// Resolve a client path (absolute, or relative to `/`, the only working directory).
pub fn resolve(path: &str) -> Result<Node, PathError> {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::Escape(format!(
                        "`..` above the root in {path:?}"
                    )));
                }
            }
            s => parts.push(s),
        }
    }
    match parts.as_slice() {
        [] => Ok(Node::Root),
        ["upload"] => Ok(Node::UploadDir),
        ["download"] => Ok(Node::DownloadDir),
        ["upload", name] => Ok(Node::Upload(file_name(name)?)),
        ["download", name] => Ok(Node::Download(file_name(name)?)),
        _ => Err(PathError::NotFound),
    }
}

/// A name allowed for a file in one of the folders: no control characters, no backslash
/// (Windows clients would read it as a separator), within the length limit.
fn file_name(name: &str) -> Result<String, PathError> {
    if name.len() > MAX_NAME_LEN {
        return Err(PathError::Escape(format!(
            "a name of {} bytes (at most {MAX_NAME_LEN})",
            name.len()
        )));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::Escape(format!(
            "control character or backslash in {name:?}"
        )));
    }
    Ok(name.to_string())
}

/// Does `name` match the glob `pattern` (`*` any run, `?` one character)? The same matcher
/// pull jobs use.
pub fn glob(pattern: &str, name: &str) -> bool {
    crate::config::glob(pattern, name)
}

/// Is `name` a temporary upload name (not handed over until renamed to a final one)?
pub fn is_temp_name(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| glob(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_tree_only() {
        assert_eq!(resolve("/"), Ok(Node::Root));
        assert_eq!(resolve("."), Ok(Node::Root));
        assert_eq!(resolve(""), Ok(Node::Root));
        assert_eq!(resolve("upload"), Ok(Node::UploadDir));
        assert_eq!(resolve("/upload/../download/"), Ok(Node::DownloadDir));
        assert_eq!(resolve("/upload/a.txt"), Ok(Node::Upload("a.txt".into())));
        assert_eq!(resolve("//download//b"), Ok(Node::Download("b".into())));
        assert!(matches!(resolve(".."), Err(PathError::Escape(_))));
        assert!(matches!(
            resolve("/upload/../../etc/passwd"),
            Err(PathError::Escape(_))
        ));
        assert_eq!(resolve("/etc/passwd"), Err(PathError::NotFound));
        assert_eq!(resolve("/upload/a/b"), Err(PathError::NotFound));
        assert!(matches!(resolve("/upload/a\nb"), Err(PathError::Escape(_))));
        assert!(matches!(
            resolve("/upload/..\\..\\x"),
            Err(PathError::Escape(_))
        ));
        assert!(matches!(
            resolve(&format!("/upload/{}", "x".repeat(300))),
            Err(PathError::Escape(_))
        ));
    }

    #[test]
    fn temp_patterns() {
        let pats: Vec<String> = ["*.tmp", "*.part", "*.filepart", ".*"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for t in ["a.tmp", "x.txt.part", "pay.filepart", ".hidden", ".tmp"] {
            assert!(is_temp_name(&pats, t), "{t}");
        }
        for f in ["a.txt", "tmp", "a.tmpx", "a.part.txt"] {
            assert!(!is_temp_name(&pats, f), "{f}");
        }
        assert!(glob("a?c*", "abcdef"));
        assert!(!glob("a?c", "ac"));
    }
}
