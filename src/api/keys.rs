//! The push API's keys: `api_key`, or every key of `api_key_file`, which `SIGHUP` reads
//! again, so that the upstream's key can be rotated without a restart (add the new key to
//! the file, reload, move the upstream over, remove the old key, reload).
//!
//! The signal thread replaces the set under a lock and bumps a generation; the API thread
//! compares the generation once per loop turn and takes the new set only when it moved, so
//! a request costs no lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Most keys a file may hold: a rotation needs two; more is likely a wrong file.
pub const MAX_API_KEYS: usize = 16;

/// The keys the push API accepts now.
pub struct ApiKeys {
    file: Option<PathBuf>,
    keys: Mutex<Arc<[String]>>,
    generation: AtomicU64,
}

impl ApiKeys {
    /// `keys` (none: the API needs no key), read again from `file` on `reload` when given.
    pub fn new(keys: Vec<String>, file: Option<PathBuf>) -> ApiKeys {
        ApiKeys {
            file,
            keys: Mutex::new(keys.into()),
            generation: AtomicU64::new(0),
        }
    }

    /// Reads `api_key_file` again: its keys replace the ones in use, which stay on error.
    /// `None` without a file; else how many keys it holds.
    pub fn reload(&self) -> Option<Result<usize, String>> {
        let path = self.file.as_deref()?;
        Some(read_key_file(path).map(|keys| {
            let n = keys.len();
            *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = keys.into();
            self.generation.fetch_add(1, Relaxed);
            n
        }))
    }

    /// Moves on each reload that took effect.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The keys in use.
    pub fn current(&self) -> Arc<[String]> {
        Arc::clone(&self.keys.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Reads an `api_key_file`: see [`keys_from_text`]; errors name the file.
pub fn read_key_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    keys_from_text(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The keys of a key file: one per line; blank lines and lines whose first non-blank is
/// `#` are skipped, and the line break is not part of a key. A key with whitespace at its
/// ends is refused, as `api_key` is, and so is one with whitespace inside: in a file that
/// is most likely a comment after the key (`key  # added in May`), which would otherwise
/// become part of it. At least one, at most [`MAX_API_KEYS`]. Errors name the line, never
/// the key.
pub fn keys_from_text(text: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("the key on line {}: {e}", i + 1);
        crate::config::check_api_key(line).map_err(at)?;
        if line.contains([' ', '\t']) {
            return Err(at(
                "has whitespace inside; write one key per line, and comments on lines of \
                 their own starting with #"
                    .into(),
            ));
        }
        if keys.len() == MAX_API_KEYS {
            return Err(format!(
                "holds more than {MAX_API_KEYS} keys (a rotation needs two)"
            ));
        }
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err("holds no key (one per line; lines starting with # are comments)".into());
    }
    Ok(keys)
}

/// Whether `given` is one of `keys`. Every key is compared, each in time that depends
/// only on the lengths, so the answer's timing does not tell which key came close.
pub fn matches(keys: &[String], given: &str) -> bool {
    keys.iter().fold(false, |found, k| {
        found | constant_time_eq(k.as_bytes(), given.as_bytes())
    })
}

/// Compares without an early exit, so response timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_holds_one_key_per_line() {
        // A file written on Windows: the CR goes with the line break.
        assert_eq!(
            keys_from_text("a\r\nb\r\n").unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(
            keys_from_text("# rotation 2026-12\nnew-key\n\nold-key\n").unwrap(),
            vec!["new-key".to_string(), "old-key".to_string()]
        );
        assert!(keys_from_text("# only a comment\n\n")
            .unwrap_err()
            .contains("holds no key"));
        let err = keys_from_text("good\n bad\n").unwrap_err();
        assert!(err.contains("line 2") && !err.contains("bad"), "{err}");
        // A comment after a key would become part of it: refused, named by line.
        let err = keys_from_text("alpha  # added in May\n").unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("whitespace inside"),
            "{err}"
        );
        // Lines of blanks, and indented comments, are skipped.
        assert_eq!(
            keys_from_text("   \n\t# note\nk1\n").unwrap(),
            vec!["k1".to_string()]
        );
        let many: String = (0..=MAX_API_KEYS).map(|i| format!("k{i}\n")).collect();
        assert!(keys_from_text(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn any_key_of_the_set_matches() {
        let keys = vec!["alpha".to_string(), "beta-key".to_string()];
        assert!(matches(&keys, "alpha"));
        assert!(matches(&keys, "beta-key"));
        assert!(!matches(&keys, "alph"));
        assert!(!matches(&keys, "beta-kez"));
        assert!(!matches(&[], "alpha"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn a_reload_replaces_the_set_and_a_bad_file_keeps_it() {
        let dir = std::env::temp_dir().join(format!("throng-api-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "one\n").unwrap();
        let keys = ApiKeys::new(vec!["one".into()], Some(path.clone()));
        assert_eq!(keys.generation(), 0);
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(keys.reload(), Some(Ok(2)));
        assert_eq!(keys.generation(), 1);
        assert_eq!(&*keys.current(), &["one".to_string(), "two".to_string()]);
        std::fs::write(&path, "\n").unwrap();
        assert!(keys.reload().is_some_and(|r| r.is_err()));
        assert_eq!(keys.generation(), 1);
        assert_eq!(keys.current().len(), 2, "the keys in use stay");
        assert_eq!(ApiKeys::new(vec!["k".into()], None).reload(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
