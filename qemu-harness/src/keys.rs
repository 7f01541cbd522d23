//! Keys the port layer hands out: each container's SSH host key (what the tether serves on
//! the back-channel) and the VCH's client key (the only key the tether then lets in).

use std::path::Path;

use sshproto::PrivateKey;

/// Key errors.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// key generation or encoding failed
    #[error("key generation: {0}")]
    Generate(String),
    /// reading or writing the client key file failed
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A host key for a new container, as the config's `key` bytes.
///
/// `vic_compat` makes what the original port layer made: a 512-bit RSA key, PKCS#1 PEM,
/// which forces `ssh-rsa` (SHA-1) signatures. Otherwise an ed25519 key (OpenSSH format).
pub fn host_key(vic_compat: bool) -> Result<Vec<u8>, KeyError> {
    let mut rng = rand_core::OsRng;
    if vic_compat {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rng, 512)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let pem = key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        return Ok(pem.as_bytes().to_vec());
    }
    let key = ssh_key::PrivateKey::random(&mut rng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(pem.as_bytes().to_vec())
}

/// The VCH's client key for a state directory (created on first use, mode 0600), and its
/// public half as an OpenSSH line for the container config.
pub fn client_key(state_root: &Path) -> Result<(PrivateKey, String), KeyError> {
    let path = state_root.join("vch_client_ed25519");
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        let key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let pem = key
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(pem.as_bytes()).map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    let pem = std::fs::read(&path).map_err(io)?;
    let key = PrivateKey::from_openssh(&pem).map_err(|e| KeyError::Generate(e.to_string()))?;
    let public = key.public_key().to_openssh();
    Ok((key, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_load_in_the_tethers_ssh() {
        let modern = host_key(false).unwrap();
        assert!(PrivateKey::from_openssh(&modern).is_ok());
        let compat = host_key(true).unwrap();
        assert!(String::from_utf8_lossy(&compat).starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let k = PrivateKey::from_pem(&compat).unwrap();
        assert_eq!(k.public_key().rsa_bits(), 512);
    }

    #[test]
    fn client_key_is_created_once() {
        let dir = std::env::temp_dir().join(format!("vch-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_, a) = client_key(&dir).unwrap();
        let (_, b) = client_key(&dir).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("ssh-ed25519 "));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
