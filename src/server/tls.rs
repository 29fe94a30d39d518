//! TLS configuration: the server side for TLS listeners (rustls, ALPN `h2` and
//! `http/1.1`), and a plain client side (web roots or a CA file) for the Lua HTTP client;
//! `https` upstreams have their own, fuller one in `upstream::tls`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::file::{TlsConfig, UpstreamTlsConfig};
use crate::upstream::Protocol;

/// The crypto provider of every TLS configuration the gateway builds.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

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

/// Builds a client configuration (built-in web roots, a CA file, or no verification) for
/// the Lua HTTP client. Upstreams use [`crate::upstream::tls`].
pub fn client_config(
    cfg: &UpstreamTlsConfig,
    base_dir: &Path,
    protocol: Protocol,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if cfg.verify == Some(false) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca_file {
            Some(ca) => {
                for cert in read_certs(&base_dir.join(ca))? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("invalid CA certificate: {e}"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = match protocol {
        Protocol::Http2 => vec![b"h2".to_vec()],
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// Accepts any upstream certificate (`tls.verify: false`, for tests and private networks);
/// signatures are still checked, so the handshake itself stays sound. Shared by every
/// client-side TLS configuration (upstreams, the JWKS and code-API fetchers, Lua's http).
#[derive(Debug)]
pub(crate) struct NoVerify(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
