//! Reading TLS material from PEM files, shared by the client listener (`client_tls_cert`,
//! `client_tls_key`) and the cluster mesh (an operator's own CA, node certificate and key):
//! certificate chains and private keys, with errors that name the file.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no {what} found in {path}")]
    Missing { what: &'static str, path: PathBuf },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates in the PEM file at `path`, in file order: a chain starts with the
/// leaf. A file without any is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read(path)?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Read {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(PemError::Missing {
            what: "certificate",
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| PemError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or(PemError::Missing {
            what: "private key",
            path: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_the_material_is_named_with_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("murmur-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not PEM at all").unwrap();
        let err = read_certs(&empty).unwrap_err().to_string();
        assert_eq!(err, format!("no certificate found in {}", empty.display()));
        let err = read_private_key(&empty).unwrap_err().to_string();
        assert_eq!(err, format!("no private key found in {}", empty.display()));
        let gone = dir.join("gone.pem");
        let err = read_certs(&gone).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {}: ", gone.display())),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
