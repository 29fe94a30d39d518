//! TLS toward `https` upstreams: turns an upstream's `tls:` settings into a rustls client
//! configuration when a configuration is loaded, and explains handshake failures.
//!
//! Trust comes from exactly one place: the operating system's store (`roots: system`, the
//! default, read with rustls-native-certs, so CAs installed with the system's tools and
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` apply), the Mozilla roots compiled into the binary
//! (`roots: builtin`, for images without a CA bundle), or a PEM bundle (`ca_file`, which
//! replaces both). `verify: false` turns verification off.
//!
//! Invariants: every file is read and checked at load time — a missing file, a PEM without
//! certificates, an unparsable key, or a client key that does not belong to its certificate
//! is a configuration error at the key's path — and read again at every reload. The
//! [`Loaded::fingerprint`] covers what was read (file contents, not names), and goes into
//! the pool key: after a reload that changes a certificate, new connections are made with
//! it instead of reusing ones made with the old one.

use std::cell::OnceCell;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use super::{Protocol, UpstreamTls};
use sluicegate_config::file::UpstreamTlsConfig;

/// The crypto provider of every TLS configuration the gateway builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a client configuration (built-in web roots, a CA file, or no verification) for
/// the Lua HTTP client; upstreams use [`Loaded`].
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
                let data = read_pem(base_dir, ca, "CA")?;
                for cert in certificates(&data, ca)? {
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

/// An upstream's TLS settings, loaded.
pub struct Loaded {
    /// What the connector needs.
    pub tls: UpstreamTls,
    /// A hash of everything the settings loaded (see the module docs).
    pub fingerprint: u64,
}

/// A problem with one key of `tls:` (the key, relative to `tls`, and the message).
pub type KeyError = (&'static str, String);

/// Loads upstream TLS settings for one configuration load. The system store is read at
/// most once per load, however many upstreams use it.
pub struct Loader<'a> {
    base_dir: &'a Path,
    system: OnceCell<Result<(RootCertStore, u64), String>>,
}

/// Whether any `tls:` key is set (they only make sense with `scheme: https`).
pub fn is_set(cfg: &UpstreamTlsConfig) -> bool {
    cfg.verify.is_some()
        || cfg.roots.is_some()
        || cfg.ca_file.is_some()
        || cfg.sni.is_some()
        || cfg.client_cert.is_some()
        || cfg.client_key.is_some()
}

impl<'a> Loader<'a> {
    /// A loader resolving relative paths against `base_dir` (the configuration's directory).
    pub fn new(base_dir: &'a Path) -> Self {
        Loader {
            base_dir,
            system: OnceCell::new(),
        }
    }

    /// Builds the client configuration for upstream `name`, or returns every problem.
    pub fn load(
        &self,
        name: &str,
        cfg: &UpstreamTlsConfig,
        protocol: Protocol,
    ) -> Result<Loaded, Vec<KeyError>> {
        let mut errors = Vec::new();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (cfg.verify, &cfg.roots, &cfg.sni, protocol).hash(&mut h);

        if let Some(sni) = &cfg.sni {
            if ServerName::try_from(sni.as_str()).is_err() {
                errors.push((
                    "sni",
                    format!("`{sni}` is not a valid DNS name or IP address"),
                ));
            }
        }
        let roots = self.roots(cfg, &mut h, &mut errors);
        let client = self.client_identity(cfg, &mut h, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let builder = match rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b,
            Err(e) => return Err(vec![("verify", e.to_string())]),
        };
        let builder = match roots {
            Some(roots) => builder.with_root_certificates(roots),
            None => {
                tracing::warn!(upstream = %name, "Upstream certificate verification is off (tls.verify: false): any server can impersonate this upstream.");
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            }
        };
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => match builder.with_client_auth_cert(chain, key) {
                Ok(c) => c,
                Err(e) => {
                    return Err(vec![(
                        "client_key",
                        format!("does not fit the certificate in `client_cert`: {e}"),
                    )])
                }
            },
        };
        config.alpn_protocols = match protocol {
            Protocol::Http2 => vec![b"h2".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        Ok(Loaded {
            tls: UpstreamTls {
                config: Arc::new(config),
                sni: cfg.sni.clone(),
            },
            fingerprint: h.finish(),
        })
    }

    /// The trust anchors (`None` when verification is off).
    fn roots(
        &self,
        cfg: &UpstreamTlsConfig,
        h: &mut impl Hasher,
        errors: &mut Vec<KeyError>,
    ) -> Option<RootCertStore> {
        let roots = cfg.roots.as_deref();
        if !matches!(roots, None | Some("system" | "builtin")) {
            errors.push((
                "roots",
                format!(
                    "unknown roots `{}`; expected system or builtin",
                    roots.unwrap_or("")
                ),
            ));
        }
        if cfg.verify == Some(false) {
            if cfg.ca_file.is_some() {
                errors.push(("ca_file", "has no effect with `verify: false`".into()));
            }
            if roots.is_some() {
                errors.push(("roots", "has no effect with `verify: false`".into()));
            }
            return None;
        }
        if let Some(ca) = &cfg.ca_file {
            if roots.is_some() {
                errors.push((
                    "roots",
                    "`ca_file` replaces the roots: set one of `roots` and `ca_file`".into(),
                ));
            }
            let certs = match read_pem(self.base_dir, ca, "certificate") {
                Ok(data) => {
                    data.hash(h);
                    certificates(&data, ca)
                }
                Err(e) => Err(e),
            };
            let mut store = RootCertStore::empty();
            match certs {
                Ok(certs) => {
                    for (i, cert) in certs.into_iter().enumerate() {
                        if let Err(e) = store.add(cert) {
                            errors.push((
                                "ca_file",
                                format!("certificate #{} in `{ca}` is not a usable CA: {e}", i + 1),
                            ));
                        }
                    }
                }
                Err(e) => errors.push(("ca_file", e)),
            }
            return Some(store);
        }
        if roots == Some("builtin") {
            return Some(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        }
        match self.system.get_or_init(system_roots) {
            Ok((store, fingerprint)) => {
                fingerprint.hash(h);
                Some(store.clone())
            }
            Err(e) => {
                errors.push(("roots", e.clone()));
                None
            }
        }
    }

    /// The client certificate chain and key for mutual TLS, if configured.
    fn client_identity(
        &self,
        cfg: &UpstreamTlsConfig,
        h: &mut impl Hasher,
        errors: &mut Vec<KeyError>,
    ) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let (cert_path, key_path) = match (&cfg.client_cert, &cfg.client_key) {
            (None, None) => return None,
            (Some(_), None) => {
                errors.push(("client_cert", "needs `client_key` too".into()));
                return None;
            }
            (None, Some(_)) => {
                errors.push(("client_key", "needs `client_cert` too".into()));
                return None;
            }
            (Some(c), Some(k)) => (c, k),
        };
        let chain = read_pem(self.base_dir, cert_path, "certificate")
            .inspect(|data| data.hash(h))
            .and_then(|data| certificates(&data, cert_path))
            .map_err(|e| errors.push(("client_cert", e)))
            .ok();
        let key = read_pem(self.base_dir, key_path, "key")
            .inspect(|data| data.hash(h))
            .and_then(|data| private_key(&data, key_path))
            .map_err(|e| errors.push(("client_key", e)))
            .ok();
        let (chain, key) = (chain?, key?);
        // Checked here rather than by the builder, so it is reported with the other errors.
        if let Err(e) =
            rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
        {
            errors.push((
                "client_key",
                format!("does not fit the certificate in `{cert_path}`: {e}"),
            ));
            return None;
        }
        Some((chain, key))
    }
}

fn read_pem(base_dir: &Path, file: &str, what: &str) -> Result<Vec<u8>, String> {
    let path = base_dir.join(file);
    std::fs::read(&path)
        .map_err(|e| format!("cannot read the {what} file `{}`: {e}", path.display()))
}

fn certificates(data: &[u8], file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &data[..]).collect();
    let certs = certs.map_err(|e| format!("invalid PEM in `{file}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in `{file}` (expected PEM `-----BEGIN CERTIFICATE-----` blocks)"
        ));
    }
    Ok(certs)
}

fn private_key(data: &[u8], file: &str) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| format!("invalid PEM in `{file}`: {e}"))?
        .ok_or_else(|| {
            format!("no private key in `{file}` (expected a PEM PKCS#8, PKCS#1 or SEC1 key)")
        })
}

/// The operating system's trust store, and a hash of it.
fn system_roots() -> Result<(RootCertStore, u64), String> {
    let found = rustls_native_certs::load_native_certs();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for cert in &found.certs {
        cert.as_ref().hash(&mut h);
    }
    let mut store = RootCertStore::empty();
    let (added, _unusable) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!(
            "no trusted certificate found in the system store{}; install the system's CA \
             certificates, point SSL_CERT_FILE at a bundle, or set `ca_file` or `roots: builtin`",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        ));
    }
    if !found.errors.is_empty() {
        tracing::warn!(loaded = added, errors = ?found.errors.iter().map(ToString::to_string).collect::<Vec<_>>(), "Some system CA certificates could not be read.");
    }
    Ok((store, h.finish()))
}

/// The server name to verify (and send as SNI, unless it is an IP address: rustls sends
/// no SNI for those, as RFC 6066 §3 requires).
pub fn server_name(tls: &UpstreamTls, host: &str) -> Result<ServerName<'static>, String> {
    let name = tls.sni.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("`{name}` is not a valid TLS server name"))
}

/// Explains a failed handshake with `name`, with a hint for the usual causes.
pub fn handshake_error(e: &std::io::Error, name: &ServerName<'_>) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let name = name.to_str();
    let hint = match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            " (the certificate is not signed by a trusted CA: check `tls.ca_file` / `tls.roots`)"
                .to_string()
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            " (the certificate is not valid for `{name}`: check the target host or `tls.sni`)"
        ),
        Some(Error::AlertReceived(
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
        )) => {
            " (does the upstream require a client certificate? see `tls.client_cert`)".to_string()
        }
        Some(
            Error::NoApplicationProtocol
            | Error::AlertReceived(AlertDescription::NoApplicationProtocol),
        ) => " (the upstream does not speak the configured `protocol`)".to_string(),
        _ => String::new(),
    };
    format!("TLS handshake with `{name}` failed: {e}{hint}")
}

/// Accepts any upstream certificate (`tls.verify: false`, for tests and private networks);
/// signatures are still checked, so the handshake itself stays sound. Shared by every
/// client-side TLS configuration (upstreams, the JWKS and code-API fetchers, Lua's http).
#[derive(Debug)]
pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &[(&str, &str)]) -> UpstreamTlsConfig {
        let mut c = UpstreamTlsConfig::default();
        for (k, v) in yaml {
            let v = Some(v.to_string());
            match *k {
                "roots" => c.roots = v,
                "ca_file" => c.ca_file = v,
                "sni" => c.sni = v,
                "client_cert" => c.client_cert = v,
                "client_key" => c.client_key = v,
                "verify" => c.verify = Some(*v.as_ref().unwrap() == "true"),
                _ => unreachable!(),
            }
        }
        c
    }

    fn keys(r: Result<Loaded, Vec<KeyError>>) -> Vec<&'static str> {
        match r {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|(k, _)| k).collect(),
        }
    }

    fn write_ca(dir: &Path, file: &str) {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        std::fs::write(dir.join(file), ca.cert.pem()).unwrap();
    }

    #[test]
    fn builtin_roots_and_alpn_follow_the_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let loader = Loader::new(dir.path());
        let h2 = loader
            .load("u", &cfg(&[("roots", "builtin")]), Protocol::Http2)
            .unwrap();
        assert_eq!(h2.tls.config.alpn_protocols, vec![b"h2".to_vec()]);
        let h1 = loader
            .load("u", &cfg(&[("roots", "builtin")]), Protocol::Http1)
            .unwrap();
        assert_eq!(h1.tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_ne!(h1.fingerprint, h2.fingerprint);
    }

    #[test]
    fn contradictory_or_incomplete_settings_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        write_ca(dir.path(), "ca.pem");
        let loader = Loader::new(dir.path());
        let load = |pairs: &[(&str, &str)]| keys(loader.load("u", &cfg(pairs), Protocol::Http1));
        assert_eq!(
            load(&[("verify", "false"), ("ca_file", "ca.pem")]),
            ["ca_file"]
        );
        assert_eq!(
            load(&[("ca_file", "ca.pem"), ("roots", "system")]),
            ["roots"]
        );
        assert_eq!(load(&[("roots", "mozilla")]).first(), Some(&"roots"));
        assert_eq!(load(&[("sni", "bad name!")]).first(), Some(&"sni"));
        assert_eq!(load(&[("client_key", "k.pem")]), ["client_key"]);
        assert_eq!(
            load(&[("ca_file", "nope.pem"), ("client_cert", "c.pem")]),
            ["ca_file", "client_cert"],
            "every problem at once"
        );
        assert!(load(&[("verify", "false")]).is_empty());
        assert!(load(&[("ca_file", "ca.pem"), ("sni", "10.0.0.1")]).is_empty());
    }

    #[test]
    fn the_fingerprint_follows_file_contents_not_names() {
        let dir = tempfile::tempdir().unwrap();
        write_ca(dir.path(), "ca.pem");
        let c = cfg(&[("ca_file", "ca.pem")]);
        let first = Loader::new(dir.path())
            .load("u", &c, Protocol::Http1)
            .unwrap();
        let again = Loader::new(dir.path())
            .load("u", &c, Protocol::Http1)
            .unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        write_ca(dir.path(), "ca.pem");
        let changed = Loader::new(dir.path())
            .load("u", &c, Protocol::Http1)
            .unwrap();
        assert_ne!(first.fingerprint, changed.fingerprint);
    }

    #[test]
    fn server_names_come_from_the_override_or_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = Loader::new(dir.path())
            .load("u", &cfg(&[("roots", "builtin")]), Protocol::Http1)
            .unwrap();
        let ip = server_name(&loaded.tls, "127.0.0.1").unwrap();
        assert!(matches!(ip, ServerName::IpAddress(_)), "no SNI for an IP");
        let host = server_name(&loaded.tls, "api.example.com").unwrap();
        assert_eq!(host.to_str(), "api.example.com");
        let mut tls = loaded.tls.clone();
        tls.sni = Some("other.example".into());
        assert_eq!(
            server_name(&tls, "127.0.0.1").unwrap().to_str(),
            "other.example"
        );
    }
}
