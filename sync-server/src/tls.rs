//! TLS for the relay: production certificates from files, or a development
//! CA and certificate for localhost that the relay makes on first start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The development CA a device must trust, written into the data directory.
pub const DEV_CA_FILE: &str = "dev-ca.pem";
const DEV_CERT_FILE: &str = "dev-cert.pem";
const DEV_KEY_FILE: &str = "dev-key.pem";

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// Creates (once) a development CA and a certificate for localhost,
/// 127.0.0.1 and ::1 signed by it; returns (cert chain path, key path).
pub fn ensure_dev_certificate(data: &Path) -> Result<(PathBuf, PathBuf)> {
    let (ca_path, cert_path, key_path) = (
        data.join(DEV_CA_FILE),
        data.join(DEV_CERT_FILE),
        data.join(DEV_KEY_FILE),
    );
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Linkbook development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(tls_err)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).map_err(tls_err)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "linkbook-server (development)");
    for ip in ["127.0.0.1", "::1"] {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            leaf.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(tls_err)?;

    // Private like everything in the data directory (issue 12, finding 4;
    // the CA is for the operator to hand to devices), each written whole
    // or not at all; the key last, since its presence means "made".
    crate::at_rest::write_private(&ca_path, ca_cert.pem().as_bytes())?;
    crate::at_rest::write_private(
        &cert_path,
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()).as_bytes(),
    )?;
    crate::at_rest::write_private(&key_path, leaf_key.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path))
}

/// A rustls server configuration from PEM files (ALPN http/1.1: the sync
/// WebSocket is an HTTP/1.1 upgrade).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| Error::Tls(format!("reading {}: {e}", cert.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("reading {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("reading {}: {e}", key.display())))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
