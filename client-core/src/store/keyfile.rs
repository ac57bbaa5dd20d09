//! The device's Ed25519 key, kept in its own owner-only file next to the database.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// File name of the device key inside a profile directory.
pub const KEY_FILE: &str = "device.key";

/// Writes a new device key (32-byte seed) with permissions 0600; refuses to overwrite.
pub fn write_device_key(dir: &Path, key: &SigningKey) -> Result<()> {
    let path = dir.join(KEY_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|e| ClientError::io(format!("cannot create {}", path.display()), e))?;
    let seed = Zeroizing::new(key.to_bytes());
    file.write_all(seed.as_slice())
        .and_then(|()| file.sync_all())
        .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), e))?;
    Ok(())
}

/// Reads the device key; refuses a key file others can read.
pub fn load_device_key(dir: &Path) -> Result<SigningKey> {
    let path = dir.join(KEY_FILE);
    let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClientError::NotEnrolled(dir.to_path_buf())
        } else {
            ClientError::io(format!("cannot read {}", path.display()), e)
        }
    })?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map_err(|e| ClientError::io(format!("cannot stat {}", path.display()), e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ClientError::Invalid(format!(
                "{} is readable by other users (mode {:o}); run `chmod 600` on it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let seed: Zeroizing<[u8; 32]> =
        Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
            ClientError::Invalid(format!("{} is not a device key", path.display()))
        })?);
    Ok(SigningKey::from_bytes(&seed))
}
