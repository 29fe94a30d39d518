//! TLS configuration of the server side for TLS listeners (rustls, ALPN `h2` and
//! `http/1.1`); client sides are the upstream crate's (`sluicegate_upstream::tls`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;

use sluicegate_config::file::TlsConfig;
use sluicegate_upstream::tls::provider;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// A certificate chain with its key, from PEM text.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &cert_pem[..]).collect();
    let certs = certs.map_err(|e| format!("invalid certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in the PEM".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("invalid key PEM: {e}"))?
        .ok_or("no private key found in the PEM")?;
    rustls::sign::CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))
}

/// A certificate served to clients whose SNI is one of `snis` (`api.example.com`, or
/// `*.example.com` for one label).
#[derive(Clone)]
pub struct SniCertificate {
    /// Host names, lower case.
    pub snis: Vec<String>,
    /// The chain and key.
    pub key: Arc<rustls::sign::CertifiedKey>,
}

/// Chooses the certificate by the client's SNI: an exact name, then a one-label
/// wildcard, then the listener's own.
#[derive(Debug)]
struct BySni {
    exact: HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    wildcard: HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    default: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let by_name = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        by_name.or(self.default.as_ref()).cloned()
    }
}

/// Builds the server configuration of a TLS listener: its own certificate (`cert_file`,
/// `key_file`) and the `certificates:` chosen by SNI. With neither, handshakes fail until a
/// certificate arrives (cluster mode, before the first is stored).
pub fn server_config(
    cfg: &TlsConfig,
    base_dir: &Path,
    http2: bool,
    by_sni: &[SniCertificate],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let default = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let (cert_path, key_path) = (base_dir.join(cert), base_dir.join(key));
            let pair = certified_key(&read(&cert_path)?, &read(&key_path)?).map_err(|e| {
                format!(
                    "`{}` and `{}`: {e}",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
            Some(pair)
        }
        (None, None) => None,
        _ => return Err("give both `cert_file` and `key_file`".into()),
    };
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for c in by_sni {
        for sni in &c.snis {
            match sni.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), c.key.clone()),
                None => exact.insert(sni.clone(), c.key.clone()),
            };
        }
    }
    let resolver = BySni {
        exact,
        wildcard,
        default,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
