//! How Hookline reaches PostgreSQL: tokio-postgres's settings, and TLS as libpq's `sslmode`
//! and `sslrootcert` ask for it (rustls with ring, as the delivery client uses).
//!
//! tokio-postgres knows `disable`, `prefer` and `require` only, and with `NoTls` it never
//! asks for TLS at all, so a database that requires it (a managed one, say) could not be
//! used. The two settings are taken out of the URL here and given the meanings libpq gives
//! them:
//! - `disable`: no TLS.
//! - `prefer` (the default; `allow` is taken as it): TLS when the server offers it, else plain.
//! - `require`: TLS or no connection.
//! - `verify-ca`: TLS, with the server's certificate chained to a trusted root.
//! - `verify-full`: that, and the certificate names the host connected to.
//!
//! Under `prefer` and `require` the certificate is not checked, unless `sslrootcert` names
//! the roots to check it against (then as `verify-ca`), as libpq does when it finds a root
//! certificate file. `sslrootcert` is a PEM file, or `system` for the public roots (Mozilla's
//! list, from webpki-roots), which is also what `verify-ca` and `verify-full` trust without
//! it; `system` takes `verify-full` only, and is `verify-full` without a mode (libpq 16).
//! Certificates are checked by WebPKI's rules, stricter than OpenSSL's: a server's own
//! certificate must not be a CA (`CA:FALSE`, even self-signed), and its name is read from
//! its subjectAltName only, not its CN.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::{StoreError, StoreResult};

/// A server to connect to: tokio-postgres's settings and the TLS they go with.
#[derive(Clone)]
pub(crate) struct Server {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// What a connection to a [`Server`] is.
pub(crate) type Connection = tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

impl Server {
    /// The server a `database.url` names (`postgres://…`).
    pub fn parse(url: &str) -> StoreResult<Server> {
        let invalid = |e: String| StoreError::Invalid(format!("database.url is not a PostgreSQL URL: {e}"));
        let (rest, mode, root) = take_tls_settings(url).map_err(invalid)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| invalid(format!("{e}")))?;
        // With roots named, `prefer` and `require` check the chain too (libpq with a root
        // certificate file). No `sslmode` leaves tokio-postgres's own: `prefer`; but with
        // `sslrootcert=system` it is `verify-full`, the only mode libpq takes with it (the
        // public roots vouch for anyone's certificate: without its name checked, or with
        // a plain connection allowed, they vouch for nothing).
        let system = root.as_deref() == Some("system");
        let rooted = if root.is_some() { Check::Chain } else { Check::Nothing };
        let (ssl_mode, check) = match mode.as_deref() {
            None if system => (SslMode::Require, Check::ChainAndName),
            Some("verify-full") => (SslMode::Require, Check::ChainAndName),
            Some(mode) if system => {
                return Err(invalid(format!("sslrootcert=system needs sslmode=verify-full, not {mode}")))
            }
            None => (config.get_ssl_mode(), rooted),
            Some("disable") => (SslMode::Disable, Check::Nothing),
            // `allow` (plain first, TLS if the server insists): TLS when offered is no less.
            Some("allow" | "prefer") => (SslMode::Prefer, rooted),
            Some("require") => (SslMode::Require, rooted),
            Some("verify-ca") => (SslMode::Require, Check::Chain),
            Some(other) => {
                return Err(invalid(format!(
                    "sslmode={other} is none of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        };
        config.ssl_mode(ssl_mode);
        let tls = client_config(check, root.as_deref())?;
        Ok(Server { config, tls: MakeRustlsConnect::new(tls) })
    }

    pub async fn connect(&self) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn client_config(check: Check, root: Option<&str>) -> StoreResult<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Verifier { provider, roots: None }),
        Check::Chain => Arc::new(Verifier { provider, roots: Some(Arc::new(roots(root)?)) }),
        Check::ChainAndName => WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider)
            .build()
            .map_err(|e| StoreError::Invalid(format!("database.url: sslrootcert: {e}")))?,
    };
    let mut config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    // PostgreSQL 17's direct TLS (`sslnegotiation=direct`) asks for it; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The roots `sslrootcert` names: a PEM file's certificates, or the public roots.
fn roots(root: Option<&str>) -> StoreResult<RootCertStore> {
    let path = match root {
        None | Some("system") => return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        Some(path) => path,
    };
    let refused = |why: String| StoreError::Invalid(format!("database.url: sslrootcert={path}: {why}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| refused(e.to_string()))? {
        let cert = cert.map_err(|e| refused(e.to_string()))?;
        roots.add(cert).map_err(|e| refused(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(refused("the file holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// `prefer` and `require` (no roots: the certificate taken as it comes, as libpq does
/// without a root certificate file), and `verify-ca` (the chain to `roots` checked, the
/// name not). The handshake's signatures are checked either way.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    roots: Option<Arc<RootCertStore>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let algorithms = self.provider.signature_verification_algorithms.all;
            let parsed = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&parsed, roots, intermediates, now, algorithms)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `url` without its `sslmode` and `sslrootcert`, and their values (the last of each).
fn take_tls_settings(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    // True if `key` is one of the two (then taken), false if it is kept.
    let mut take = |key: &str, value: String| {
        let slot = match key {
            "sslmode" => &mut mode,
            "sslrootcert" => &mut root,
            _ => return false,
        };
        *slot = Some(value);
        true
    };
    let uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if let (true, Some((base, query))) = (uri, url.split_once('?')) {
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(value).decode_utf8().map_err(|e| format!("{key}: {e}"))?;
            if !take(key, value.into_owned()) {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, mode, root));
    }
    // The key=value form (`host=… sslmode=…`) goes to tokio-postgres as it is (`database.url`
    // is refused in that form before it comes here).
    Ok((url.to_owned(), None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_the_url() {
        let url = "postgres://u:p%40@db:5432/h?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem";
        let (rest, mode, root) = take_tls_settings(url).unwrap();
        assert_eq!(rest, "postgres://u:p%40@db:5432/h?application_name=x");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/etc/ca.pem")));
        let (rest, mode, root) = take_tls_settings("postgresql://db/h?sslmode=require").unwrap();
        assert_eq!((rest.as_str(), mode.as_deref(), root), ("postgresql://db/h", Some("require"), None));
    }

    #[test]
    fn modes_map_to_libpq_meanings() {
        let mode = |url: &str| Server::parse(url).map(|s| s.config.get_ssl_mode());
        assert_eq!(mode("postgres://db/h").unwrap(), SslMode::Prefer);
        assert_eq!(mode("postgres://db/h?sslmode=disable").unwrap(), SslMode::Disable);
        assert_eq!(mode("postgres://db/h?sslmode=verify-full").unwrap(), SslMode::Require);
        assert_eq!(mode("postgres://db/h?sslmode=allow").unwrap(), SslMode::Prefer);
        assert_eq!(mode("postgres://db/h?sslrootcert=system").unwrap(), SslMode::Require, "verify-full");
        let weaker = mode("postgres://db/h?sslmode=verify-ca&sslrootcert=system").err().unwrap().to_string();
        assert!(weaker.contains("sslrootcert=system needs sslmode=verify-full"), "{weaker}");
        let bad = mode("postgres://db/h?sslmode=strict").err().unwrap().to_string();
        assert!(bad.contains("sslmode=strict is none of"), "{bad}");
        let missing = mode("postgres://db/h?sslmode=verify-ca&sslrootcert=/nonexistent.pem").err().unwrap().to_string();
        assert!(missing.contains("sslrootcert=/nonexistent.pem"), "{missing}");
    }
}
