//! TLS configuration of the server side for TLS listeners (rustls, ALPN `h2` and
//! `http/1.1`); client sides are the upstream crate's (`sluicegate_upstream::tls`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use sluicegate_config::file::TlsConfig;
use sluicegate_upstream::tls::provider;

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("invalid PEM in `{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in `{}`", path.display()));
    }
    Ok(certs)
}

/// Builds the server configuration of a TLS listener.
pub fn server_config(
    cfg: &TlsConfig,
    base_dir: &Path,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(&base_dir.join(&cfg.cert_file))?;
    let key_path = base_dir.join(&cfg.key_file);
    let key_data = std::fs::read(&key_path)
        .map_err(|e| format!("cannot read `{}`: {e}", key_path.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_data.as_slice())
        .map_err(|e| format!("invalid PEM in `{}`: {e}", key_path.display()))?
        .ok_or_else(|| format!("no private key found in `{}`", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
