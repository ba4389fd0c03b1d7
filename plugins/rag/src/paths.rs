//! Paths: walking the roots, exclusion globs, and validating a query's `path_prefix`.
//!
//! The walk never follows symlinks (a link inside a root could point anywhere), skips hidden
//! entries (`.git`, `.cache`) and the index directory itself, and reports file names that are
//! not UTF-8 as skipped: every stored path is a canonical absolute UTF-8 string, so a
//! `path_prefix` filter is a plain string prefix over them.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// One regular file found under a root.
#[derive(Debug, Clone)]
pub struct Found {
    /// Canonical absolute path (the root is canonical and no symlink is followed below it).
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
}

/// What the walk did not descend into or return, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WalkSkips {
    pub symlink: u64,
    pub non_utf8_name: u64,
    pub unreadable: u64,
    pub special: u64,
}

/// Walks every root and returns the regular files, sorted by path (deterministic indexing).
pub fn walk(roots: &[PathBuf], exclude: &[String], index_dir: &Path) -> (Vec<Found>, WalkSkips) {
    let mut found = Vec::new();
    let mut skips = WalkSkips::default();
    for root in roots {
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read directory; skipped");
                    skips.unreadable += 1;
                    continue;
                }
            };
            for entry in entries {
                let Ok(entry) = entry else {
                    skips.unreadable += 1;
                    continue;
                };
                let path = entry.path();
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    skips.non_utf8_name += 1;
                    continue;
                };
                if name.starts_with('.') || path == index_dir {
                    continue;
                }
                let relative = path.strip_prefix(root).unwrap_or(&path);
                if is_excluded(relative, exclude) {
                    continue;
                }
                // `DirEntry::file_type` does not follow symlinks.
                let Ok(file_type) = entry.file_type() else {
                    skips.unreadable += 1;
                    continue;
                };
                if file_type.is_symlink() {
                    skips.symlink += 1;
                } else if file_type.is_dir() {
                    stack.push(path);
                } else if file_type.is_file() {
                    let Some(path_str) = path.to_str() else {
                        skips.non_utf8_name += 1;
                        continue;
                    };
                    match entry.metadata() {
                        Ok(meta) => {
                            found.push(Found { path: path_str.to_owned(), size: meta.len(), mtime_ns: mtime_ns(&meta) })
                        }
                        Err(_) => skips.unreadable += 1,
                    }
                } else {
                    skips.special += 1;
                }
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    (found, skips)
}

/// Modification time in nanoseconds since the epoch (0 when the filesystem has none).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// True when a pattern matches any component of `relative`, or `relative` as a whole.
pub fn is_excluded(relative: &Path, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return false;
    }
    let whole = relative.to_string_lossy();
    patterns.iter().any(|p| {
        glob_match(p, &whole)
            || relative.components().any(|c| matches!(c, Component::Normal(n) if glob_match(p, &n.to_string_lossy())))
    })
}

/// `*` matches any run of characters (including none), `?` one character; nothing else is
/// special.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Validates a query's `path_prefix` and returns the canonical string prefix to filter on.
///
/// The prefix is an absolute path (a directory, a file, or the start of a file name, since it
/// filters as a string prefix). Rules: no `..` component; the longest existing ancestor is
/// resolved with symlinks, and it must be inside one of the (canonical) roots; so are both a
/// `../` escape and a symlink pointing out refused, whatever the remaining text.
pub fn validate_prefix(prefix: &str, roots: &[PathBuf]) -> Result<String> {
    const FIELD: &str = "path_prefix";
    if prefix.is_empty() {
        return Err(Error::invalid(FIELD, "must not be empty (omit it to search everything)"));
    }
    if prefix.len() > 4096 || prefix.contains('\0') {
        return Err(Error::invalid(FIELD, "is not a usable path"));
    }
    let path = Path::new(prefix);
    if !path.is_absolute() {
        return Err(Error::invalid(
            FIELD,
            format!("must be an absolute path under one of the roots ({})", list(roots)),
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::invalid(FIELD, "must not contain `..`"));
    }
    // Split into the longest existing ancestor (resolved) and the rest (kept as text).
    let ends_with_slash = prefix.ends_with('/');
    let mut existing = path.to_path_buf();
    let mut rest: Vec<String> = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(c) => break c,
            Err(_) => {
                let Some(name) = existing.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                    return Err(Error::invalid(FIELD, "is not inside any root"));
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(Error::invalid(FIELD, "is not inside any root"));
                }
            }
        }
    };
    let inside = roots.iter().any(|root| resolved.starts_with(root));
    // A prefix above a root ("/srv" for root "/srv/docs") would be harmless but is most likely
    // a mistake; it is refused like any other path outside the roots.
    if !inside {
        return Err(Error::invalid(
            FIELD,
            format!("{prefix:?} is outside the configured roots ({}) after resolving symlinks", list(roots)),
        ));
    }
    let mut out = resolved;
    for part in rest.iter().rev() {
        out.push(part);
    }
    let mut s = out.to_str().ok_or_else(|| Error::invalid(FIELD, "is not valid UTF-8"))?.to_owned();
    if ends_with_slash && !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

fn list(roots: &[PathBuf]) -> String {
    roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.min.js", "app.min.js"));
        assert!(!glob_match("*.min.js", "app.js"));
        assert!(glob_match("print.html", "print.html"));
        assert!(glob_match("ch0?-*", "ch04-01.html"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acbd"));
        assert!(is_excluded(Path::new("2018-edition/ch01.html"), &["2018-edition".into()]));
        assert!(is_excluded(Path::new("a/b/print.html"), &["print.html".into()]));
        assert!(is_excluded(Path::new("a/b/c.txt"), &["a/b/*".into()]));
        assert!(!is_excluded(Path::new("a/b/c.txt"), &["b/*".into()]));
    }

    #[test]
    fn prefixes_outside_the_roots_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let roots = vec![root.clone()];
        let ok = |p: &Path| validate_prefix(p.to_str().unwrap(), &roots);

        assert_eq!(ok(&root).unwrap(), root.to_str().unwrap());
        assert_eq!(ok(&root.join("docs")).unwrap(), root.join("docs").to_str().unwrap());
        // A partial file name is a string prefix.
        assert_eq!(ok(&root.join("docs/ch0")).unwrap(), root.join("docs/ch0").to_str().unwrap());
        assert_eq!(
            validate_prefix(&format!("{}/docs/", root.display()), &roots).unwrap(),
            format!("{}/docs/", root.display())
        );

        for bad in [
            root.join("../outside"),
            root.join("docs/../../outside"),
            root.join("docs/.."),
            root.join("escape"),
            root.join("escape/file.txt"),
            outside.clone(),
            base.clone(),
            PathBuf::from("/etc/passwd"),
            PathBuf::from("relative/path"),
        ] {
            let err = ok(&bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { field: "path_prefix", .. }), "{}: {err}", bad.display());
        }
        assert!(validate_prefix("", &roots).is_err());
    }

    #[test]
    fn walk_skips_symlinks_hidden_entries_and_exclusions() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/.git")).unwrap();
        std::fs::create_dir_all(root.join("skipme")).unwrap();
        std::fs::write(root.join("a/one.md"), "one").unwrap();
        std::fs::write(root.join("a/.git/config"), "x").unwrap();
        std::fs::write(root.join("skipme/two.md"), "two").unwrap();
        std::fs::write(root.join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        std::os::unix::fs::symlink(root.join("b.txt"), root.join("b-link.txt")).unwrap();
        let (found, skips) = walk(std::slice::from_ref(&root), &["skipme".into()], &root.join("index"));
        let names: Vec<_> =
            found.iter().map(|f| f.path.strip_prefix(root.to_str().unwrap()).unwrap().to_owned()).collect();
        assert_eq!(names, vec!["/a/one.md", "/b.txt"]);
        assert_eq!(skips.symlink, 2);
    }
}
