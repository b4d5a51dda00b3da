//! The users file: one `name:hash` line per user, in Mosquitto 2.x's format, so a fleet moves
//! between Mosquitto and Brook without resetting a password.
//!
//! | hash | form | written by |
//! |---|---|---|
//! | PBKDF2-HMAC-SHA512 | `$7$ITERATIONS$SALT$HASH` (base64, 12-byte salt, 64-byte hash) | `brook passwd`, `mosquitto_passwd` 2.x |
//! | salted SHA-512 | `$6$SALT$HASH`: SHA-512 of password then salt | `mosquitto_passwd` 1.x (read only) |
//!
//! `brook passwd` writes [`DEFAULT_ITERATIONS`] rounds (Mosquitto writes 101); a check costs
//! what its line's rounds cost, measured by `brook bench password` (see BENCHMARKS.md). Blank
//! lines and lines starting with `#` are skipped; any other line that does not parse makes the
//! whole file refused, naming the line.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::{AuthError, Malformed};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha512};

/// Rounds `brook passwd` uses: about 10 ms per check on one x86_64 core of 2026 and an
/// estimated 100-200 ms on a Pi Zero 2 W (see BENCHMARKS.md), slow for a guesser and fast
/// enough for a fleet reconnecting through `auth.login_concurrency` checks at a time.
pub const DEFAULT_ITERATIONS: u32 = 10_000;

/// Longest user name accepted (MQTT allows 65,535 bytes; no one needs that).
pub const MAX_NAME: usize = 256;
/// Longest password `brook passwd` takes.
pub const MAX_PASSWORD: usize = 1024;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// A stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    SaltedSha512 {
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "PBKDF2-SHA512({iterations} rounds)")
            }
            PasswordHash::SaltedSha512 { .. } => f.write_str("salted SHA-512"),
        }
    }
}

fn decode_hash(text: &str) -> Result<[u8; HASH_LEN], Malformed> {
    let bytes = B64
        .decode(text)
        .map_err(|e| format!("hash is not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| Malformed(format!("hash is {} bytes, not {HASH_LEN}", b.len())))
}

impl PasswordHash {
    /// Parses the part after `name:`.
    pub fn parse(text: &str) -> Result<PasswordHash, Malformed> {
        let parts: Vec<&str> = text.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("iterations {iterations:?} is not a number"))?;
                if iterations == 0 {
                    return Err("iterations must be at least 1".into());
                }
                let salt = B64
                    .decode(salt)
                    .map_err(|e| format!("salt is not base64: {e}"))?;
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash: decode_hash(hash)?,
                })
            }
            ["", "6", salt, hash] => Ok(PasswordHash::SaltedSha512 {
                salt: B64
                    .decode(salt)
                    .map_err(|e| format!("salt is not base64: {e}"))?,
                hash: decode_hash(hash)?,
            }),
            _ => Err("not a $7$ (PBKDF2-SHA512) or $6$ (SHA-512) password hash".into()),
        }
    }

    /// A new hash of `password` with a random salt.
    pub fn new(password: &[u8], iterations: u32) -> std::io::Result<PasswordHash> {
        let mut salt = vec![0u8; SALT_LEN];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations.max(1), &mut hash);
        Ok(PasswordHash::Pbkdf2Sha512 {
            iterations: iterations.max(1),
            salt,
            hash,
        })
    }

    /// Whether `password` matches, comparing in constant time. Slow on purpose: call it off
    /// the async threads.
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut got = [0u8; HASH_LEN];
        let want = match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut got);
                hash
            }
            PasswordHash::SaltedSha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                got.copy_from_slice(&h.finalize());
                hash
            }
        };
        got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                B64.encode(salt),
                B64.encode(hash)
            ),
            PasswordHash::SaltedSha512 { salt, hash } => {
                write!(f, "$6${}${}", B64.encode(salt), B64.encode(hash))
            }
        }
    }
}

/// Checks a user name as a users-file key: not empty, no `:`, no control characters.
pub fn validate_name(name: &str) -> Result<(), Malformed> {
    if name.is_empty() {
        return Err("user name is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(Malformed(format!(
            "user name is longer than {MAX_NAME} bytes"
        )));
    }
    if name.contains(':') || name.chars().any(char::is_control) {
        return Err(Malformed(format!(
            "user name {name:?} contains ':' or a control character"
        )));
    }
    Ok(())
}

/// The users of a users file, in file order.
#[derive(Clone, Debug, Default)]
pub struct Users {
    order: Vec<String>,
    hashes: HashMap<String, PasswordHash>,
}

impl Users {
    /// Parses a users file's text; errors name the line.
    pub fn parse(text: &str) -> Result<Users, Malformed> {
        let mut users = Users::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(Malformed(format!(
                    "line {}: no ':' between user name and hash",
                    i + 1
                )));
            };
            validate_name(name).map_err(|e| format!("line {}: {e}", i + 1))?;
            let hash = PasswordHash::parse(hash).map_err(|e| format!("line {}: {e}", i + 1))?;
            if users.hashes.insert(name.to_string(), hash).is_some() {
                return Err(Malformed(format!(
                    "line {}: user {name:?} appears twice",
                    i + 1
                )));
            }
            users.order.push(name.to_string());
        }
        Ok(users)
    }

    /// Reads a users file.
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            what: "auth.users_file",
            path: path.to_path_buf(),
            source,
        })?;
        Users::parse(&text).map_err(|reason| AuthError::Content {
            what: "auth.users_file",
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn get(&self, name: &str) -> Option<&PasswordHash> {
        self.hashes.get(name)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Adds or replaces a user (kept in its place when replaced).
    pub fn set(&mut self, name: &str, hash: PasswordHash) {
        if self.hashes.insert(name.to_string(), hash).is_none() {
            self.order.push(name.to_string());
        }
    }

    /// Removes a user; `false` when there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        let had = self.hashes.remove(name).is_some();
        self.order.retain(|n| n != name);
        had
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            if let Some(h) = self.hashes.get(name) {
                out.push_str(name);
                out.push(':');
                out.push_str(&h.to_string());
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_hash_verifies_its_password_only() {
        let h = PasswordHash::new(b"s3cret", 50).unwrap();
        assert!(h.verify(b"s3cret"));
        assert!(!h.verify(b"s3cret "));
        assert!(!h.verify(b""));
        let back = PasswordHash::parse(&h.to_string()).unwrap();
        assert!(back == h);
        assert!(h.to_string().starts_with("$7$50$"));
    }

    #[test]
    fn known_mosquitto_lines_verify() {
        // PBKDF2-HMAC-SHA512, 101 rounds, as mosquitto_passwd 2.x writes; computed with
        // Python's hashlib.pbkdf2_hmac("sha512", b"pass", salt, 101).
        let salt = b"0123456789ab";
        let mut hash = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"pass", salt, 101, &mut hash);
        let line = format!("$7$101${}${}", B64.encode(salt), B64.encode(hash));
        let h = PasswordHash::parse(&line).unwrap();
        assert!(h.verify(b"pass"));
        assert!(!h.verify(b"Pass"));
        // $6$: SHA-512(password || salt).
        let mut d = Sha512::new();
        d.update(b"pass");
        d.update(salt);
        let line = format!("$6${}${}", B64.encode(salt), B64.encode(d.finalize()));
        let h = PasswordHash::parse(&line).unwrap();
        assert!(h.verify(b"pass"));
        assert!(!h.verify(b"pas"));
    }

    #[test]
    fn bad_files_name_the_line() {
        let ok = PasswordHash::new(b"x", 1).unwrap().to_string();
        let e = Users::parse(&format!("# c\n\nalice:{ok}\nbob\n")).unwrap_err();
        assert!(e.0.contains("line 4"), "{e}");
        let e = Users::parse(&format!("alice:{ok}\nalice:{ok}\n")).unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("twice"), "{e}");
        let e = Users::parse("alice:plaintext\n").unwrap_err();
        assert!(e.0.contains("line 1") && e.0.contains("$7$"), "{e}");
        let e = Users::parse("alice:$7$x$AAAA$AAAA\n").unwrap_err();
        assert!(e.0.contains("iterations"), "{e}");
        let e = Users::parse("alice:$7$10$AAAA$AAAA\n").unwrap_err();
        assert!(e.0.contains("bytes"), "{e}");
        let e = Users::parse(&format!(":{ok}\n")).unwrap_err();
        assert!(e.0.contains("empty"), "{e}");
    }

    #[test]
    fn set_remove_render_keep_order() {
        let mut u = Users::default();
        let h = PasswordHash::new(b"x", 1).unwrap();
        u.set("b", h.clone());
        u.set("a", h.clone());
        u.set("b", h.clone());
        let text = u.render();
        assert!(text.starts_with("b:$7$1$") && text.contains("\na:$7$1$"));
        let back = Users::parse(&text).unwrap();
        assert_eq!(back.len(), 2);
        assert!(u.remove("b"));
        assert!(!u.remove("b"));
        assert_eq!(u.len(), 1);
    }
}
