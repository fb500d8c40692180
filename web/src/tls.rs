//! HTTPS for `gridex serve`: the rustls server configuration built from `http.tls_cert_file` and
//! `http.tls_key_file` (PEM), so that API keys and signed trader requests never cross the network
//! in clear. Both settings or neither (plain HTTP, e.g. behind a TLS-terminating proxy); TLS 1.2
//! and 1.3 only, with the ring provider chosen explicitly (the dependency tree also compiles
//! aws-lc-rs, so rustls cannot pick a process default by itself).
//!
//! Errors name the setting or the file and never quote a file's contents (the key file is a secret).

use crate::settings::{HttpSettings, TlsFilesIncomplete};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The protocol versions served: TLS 1.2 and 1.3 (rustls has nothing older).
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The `Strict-Transport-Security` value sent with `http.hsts` (one year, as browsers' preload
/// lists expect; subdomains are left to the operator's proxy or DNS plan).
pub const HSTS_HEADER_VALUE: &str = "max-age=31536000";

/// Why the HTTPS settings cannot be served. Each message is one line naming the setting or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Incomplete(#[from] TlsFilesIncomplete),
    #[error("cannot read the TLS {what} file {}: {reason}", path.display())]
    Read { what: &'static str, path: PathBuf, reason: String },
    #[error("invalid TLS certificate file {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("invalid TLS private key file {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("the TLS certificate {} and key {} cannot be served: {reason}", cert.display(), key.display())]
    Refused { cert: PathBuf, key: PathBuf, reason: String },
}

/// The server configuration for the settings' certificate and key, or `None` for plain HTTP.
pub fn server_config(http: &HttpSettings) -> Result<Option<ServerConfig>, TlsError> {
    let Some((cert, key)) = http.tls_files()? else { return Ok(None) };
    let chain = load_certificates(cert)?;
    let private_key = load_key(key)?;
    let refused = |reason: String| TlsError::Refused { cert: cert.to_owned(), key: key.to_owned(), reason };
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|error| refused(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| refused(error.to_string()))?;
    Ok(Some(config))
}

/// Whether serving plain HTTP on `address` exposes keys and signatures to the network: any address
/// but loopback. Only a warning: behind a TLS-terminating proxy it is legitimate.
pub fn plain_http_exposed(address: SocketAddr, tls: bool) -> bool {
    !tls && !address.ip().is_loopback()
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read { what, path: path.to_owned(), reason: error.to_string() })
}

/// Every certificate of the PEM file, the server's first (as rustls expects the chain).
fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read("certificate", path)?;
    let invalid = |reason: String| TlsError::Certificate { path: path.to_owned(), reason };
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("not valid PEM ({error})")))?;
    if chain.is_empty() {
        return Err(invalid("no PEM certificate (BEGIN CERTIFICATE) in it".to_owned()));
    }
    Ok(chain)
}

/// The first private key of the PEM file. The reasons never quote the file: it is a secret.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        let reason = match error {
            pem::Error::NoItemsFound => "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            _ => "not valid PEM",
        };
        TlsError::Key { path: path.to_owned(), reason: reason.to_owned() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(cert: Option<&str>, key: Option<&str>) -> HttpSettings {
        HttpSettings {
            tls_cert_file: cert.map(str::to_owned),
            tls_key_file: key.map(str::to_owned),
            ..HttpSettings::default()
        }
    }

    #[test]
    fn neither_file_is_plain_http_and_one_alone_names_the_missing_setting() {
        assert_eq!(http(None, None).tls_files(), Ok(None));
        let shown = http(Some("cert.pem"), None).tls_files().expect_err("key missing").to_string();
        assert!(shown.contains("http.tls_key_file"), "{shown}");
        let shown = http(None, Some("key.pem")).tls_files().expect_err("cert missing").to_string();
        assert!(shown.contains("http.tls_cert_file"), "{shown}");
    }

    #[test]
    fn a_missing_or_empty_file_is_an_error_naming_it_and_a_bad_key_is_never_quoted() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("absent.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw=!\n-----END PRIVATE KEY-----\n")
            .expect("write");
        let missing_shown = missing.display().to_string();
        let shown = server_config(&http(Some(&missing_shown), Some(&missing_shown))).expect_err("missing").to_string();
        assert!(shown.contains(&missing_shown) && !shown.contains('\n'), "{shown}");
        let empty_shown = empty.display().to_string();
        let shown = server_config(&http(Some(&empty_shown), Some(&empty_shown))).expect_err("empty").to_string();
        assert!(shown.contains(&empty_shown) && shown.contains("certificate"), "{shown}");
        let error = load_key(&key).expect_err("not a key");
        let shown = format!("{error} {error:?}");
        assert!(shown.contains(&key.display().to_string()) && !shown.contains("c2VjcmV0"), "{shown}");
    }

    #[test]
    fn plain_http_is_exposed_on_every_address_but_loopback() {
        let address = |text: &str| text.parse::<SocketAddr>().expect("an address");
        assert!(plain_http_exposed(address("0.0.0.0:8080"), false));
        assert!(plain_http_exposed(address("[::]:8080"), false));
        assert!(plain_http_exposed(address("192.168.1.5:8080"), false));
        assert!(!plain_http_exposed(address("127.0.0.1:8080"), false));
        assert!(!plain_http_exposed(address("[::1]:8080"), false));
        assert!(!plain_http_exposed(address("0.0.0.0:8443"), true));
    }
}
