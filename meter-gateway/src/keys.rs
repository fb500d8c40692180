//! Key files. A key file holds one ed25519 secret seed: 64 lowercase hex digits (32 bytes), optionally
//! followed by a newline, file mode 0600. The public key derived from it names the device
//! ([`protocol::DeviceId`]) or the trading account ([`protocol::AccountId`]).

use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("key file {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("key file {0} must hold 64 hex digits (a 32-byte ed25519 seed)")]
    Format(PathBuf),
}

/// Parses the key file format.
pub fn parse_seed_hex(text: &str) -> Option<SigningKey> {
    let text = text.trim();
    let mut seed = [0u8; 32];
    (text.len() == 64 && hex::decode_to_slice(text, &mut seed).is_ok()).then(|| SigningKey::from_bytes(&seed))
}

pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
    parse_seed_hex(&text).ok_or_else(|| KeyError::Format(path.to_path_buf()))
}

/// Writes `key` to a new file with mode 0600. Never overwrites an existing key.
pub fn save(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let write = |source| KeyError::Write { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_path_buf())
        } else {
            write(source)
        }
    })?;
    file.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)
}

/// A new random key from the operating system's generator.
pub fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// Creates a new key file and returns the key.
pub fn generate_file(path: &Path) -> Result<SigningKey, KeyError> {
    let key = generate();
    save(path, &key)?;
    Ok(key)
}

/// Loads the key at `path`, creating it first if it does not exist (used by the demo).
pub fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
    if path.exists() {
        load(path)
    } else {
        generate_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("device.key");
        let key = generate_file(&path).expect("writes");
        assert_eq!(load(&path).expect("reads").to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(generate_file(&path), Err(KeyError::Exists(_))));
    }

    #[test]
    fn malformed_key_files_are_refused() {
        assert!(parse_seed_hex("abcd").is_none());
        assert!(parse_seed_hex(&"zz".repeat(32)).is_none());
        assert!(parse_seed_hex(&format!("{}\n", "01".repeat(32))).is_some());
    }
}
