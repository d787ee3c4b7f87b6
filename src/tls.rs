//! TLS termination: several certificates per listener, chosen by SNI (exact names first, then
//! wildcards, both read from each certificate; else the first, as nginx's default server),
//! held behind an `ArcSwap` so a reload can renew them without a restart.

use crate::config::ConfigErrors;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// The certificates of one listener, compiled.
pub struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)` for `*.example.com`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.exact.keys().map(String::as_str).collect();
        names.sort();
        write!(f, "Certs({names:?}, {} wildcard)", self.wildcard.len())
    }
}

impl Certs {
    /// Loads `(cert, key)` PEM pairs; each error names `path.certificates[i]`.
    pub fn load(pairs: &[(String, String)], path: &str, errs: &mut ConfigErrors) -> Option<Certs> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        for (i, (cert, key)) in pairs.iter().enumerate() {
            let at = format!("{path}.certificates[{i}]");
            let (certified, names) = match load_pair(cert, key) {
                Ok(x) => x,
                Err(why) => {
                    errs.push(at, why);
                    continue;
                }
            };
            let certified = Arc::new(certified);
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_owned(), Arc::clone(&certified))),
                    // The first certificate naming a host wins, as the file orders them.
                    None => {
                        exact.entry(name).or_insert_with(|| Arc::clone(&certified));
                    }
                }
            }
            default.get_or_insert(certified);
        }
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Some(Certs {
            exact,
            wildcard,
            default: default?,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(c) = self.exact.get(&name) {
            return Arc::clone(c);
        }
        for (suffix, c) in &self.wildcard {
            // `*.example.com` covers exactly one more label: `a.example.com`, not `a.b.example.com`.
            if let Some(label) = name.strip_suffix(suffix.as_str()) {
                if !label.is_empty() && !label.contains('.') {
                    return Arc::clone(c);
                }
            }
        }
        Arc::clone(&self.default)
    }
}

fn load_pair(cert: &str, key: &str) -> Result<(CertifiedKey, Vec<String>), String> {
    let loaded = pingora::tls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("cannot load {cert} / {key}: {e}"))?;
    let Some((chain, key_der)) = loaded else {
        return Err(format!(
            "no certificate in {cert} or no private key in {key}"
        ));
    };
    if chain.is_empty() {
        return Err(format!("no certificate in {cert}"));
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{key}: unusable private key: {e}"))?;
    let names = names_in(&chain[0]).map_err(|e| format!("{cert}: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{key} does not belong to {cert}: {e}"))?;
    Ok((certified, names))
}

/// The DNS names a certificate is for: its subjectAltName entries, else its common name.
fn names_in(cert: &rustls::pki_types::CertificateDer) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| format!("not a certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_owned());
        }
    }
    Ok(names)
}

/// The resolver a listener's TLS config asks on every handshake; a reload stores new `Certs`.
#[derive(Debug)]
pub struct CertStore(ArcSwap<Certs>);

impl CertStore {
    pub fn new(certs: Arc<Certs>) -> Self {
        CertStore(ArcSwap::new(certs))
    }

    pub fn store(&self, certs: Arc<Certs>) {
        self.0.store(certs);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(hello.server_name()))
    }
}

/// Pingora builds a listener's rustls config only around callbacks or cert files; portico
/// brings its own resolver and needs no callback.
pub struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}
