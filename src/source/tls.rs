//! TLS to Postgres with rustls, one client configuration per libpq `sslmode` (see
//! [`PgSslMode`]): the chain and host name checked by rustls's own verifier for `require` and
//! `verify-full`; the chain alone for `verify-ca`; nothing for `prefer` and `allow`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::PgSslMode;
use crate::error::{Error, Result};
use crate::settings::{PG_CA_FILE, PG_DSN};

/// The rustls client configuration for the configured `sslmode`; `None` for a plain connection.
pub(super) fn client_config(mode: PgSslMode, ca_file: Option<&std::path::Path>) -> Result<Option<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = || match ca_file {
        Some(path) => read_roots(&format!("{PG_CA_FILE} (or sslrootcert in {PG_DSN})"), path),
        None => Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("cannot set up TLS for Postgres: {e}")))?;
    let tls = match mode {
        PgSslMode::Disable => return Ok(None),
        PgSslMode::Require | PgSslMode::VerifyFull => builder.with_root_certificates(roots()?).with_no_client_auth(),
        PgSslMode::VerifyCa => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(WithoutHostName { roots: Some(Arc::new(roots()?)), provider })).with_no_client_auth()
        }
        PgSslMode::Allow | PgSslMode::Prefer => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(WithoutHostName { roots: None, provider })).with_no_client_auth()
        }
    };
    Ok(Some(tls))
}

/// CA certificates from a PEM file, for the setting `var`.
pub(crate) fn read_roots(var: &str, path: &std::path::Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in crate::pem::ca_certificates(var, path)? {
        roots.add(cert).map_err(|e| Error::Config(format!("{var}='{}': unusable certificate ({e})", path.display())))?;
    }
    Ok(roots)
}

/// Checks the server's certificate chain against `roots` but not the host name (`verify-ca`),
/// or nothing at all when `roots` is `None` (`prefer`, `allow`: encryption against a passive
/// listener only). The handshake signatures are always checked: they prove the server holds the
/// certificate's key.
#[derive(Debug)]
struct WithoutHostName {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for WithoutHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.provider.signature_verification_algorithms.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
