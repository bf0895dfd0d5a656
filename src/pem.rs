//! CA certificates from a PEM file, for `PG_CA_FILE` and `ES_CA_FILE` alike.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};

/// Every certificate in the file; a missing, unreadable or empty file is a configuration error
/// naming the setting `var`.
pub fn ca_certificates(var: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| Error::Config(format!("{var}='{}': {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(format!("cannot read it ({e}); expected a PEM file of CA certificates")))?;
    let certs = certs.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate; expected a PEM file of CA certificates".into()));
    }
    Ok(certs)
}
