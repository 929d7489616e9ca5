//! Certificates from a PEM file (`-----BEGIN CERTIFICATE-----` blocks), for the clients that
//! trust a private CA besides the public roots (`gpx --cacert`, `gpuproxy-agent --cacert`).

use base64::Engine;
use rustls_pki_types::CertificateDer;

/// The certificates in the PEM file at `path`; an error naming the file otherwise (none in it,
/// bad base64, unreadable).
pub fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (line, cur.as_mut()) {
            ("-----BEGIN CERTIFICATE-----", _) => cur = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(b64)) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("{path}: {e}"))?;
                out.push(der.into());
                cur = None;
            }
            (l, Some(b64)) => b64.push_str(l),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(out)
}
