//! Self-signed certificates (rcgen) for TLS listeners, and a rustls client that trusts
//! exactly that certificate and offers the ALPN protocols a test asks for.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::within;

/// A certificate for `localhost` and `127.0.0.1`, written as PEM files into `dir`.
pub struct SelfSigned {
    /// The certificate, DER-encoded (what the client trusts).
    pub der: CertificateDer<'static>,
    /// The private key, PKCS#8 DER.
    key: Vec<u8>,
}

impl SelfSigned {
    /// Generates the pair and writes `cert.pem` and `key.pem` into `dir`.
    pub fn write_to(dir: &Path) -> SelfSigned {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
        SelfSigned {
            der: certified.cert.der().clone(),
            key: certified.key_pair.serialize_der(),
        }
    }

    /// A server configuration with this certificate, offering `alpn` (for TLS upstreams).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Connects to `addr` over TLS as `localhost`, offering `alpn` (in order).
    pub async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        within("TLS handshake", connector.connect(name, tcp))
            .await
            .unwrap()
    }
}

/// The ALPN protocol the server chose on `stream`.
pub fn negotiated(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}
