//! `X-Forwarded-Client-Cert`: what the backend learns about the client's certificate.
//!
//! Apps trust this header to say who the caller is, so where it may come from is the operator's choice
//! (`forwarded_client_cert`), with gorouter's meanings:
//!
//! - `always_forward`: the router does not touch it (something in front of the router terminated TLS and set it).
//! - `forward`: it is kept only when the client proved a certificate to this router over TLS; otherwise it is
//!   removed, since anyone can type a header.
//! - `sanitize_set`: the client's value is always removed, and replaced by the certificate the client presented
//!   here, if any: the base64 of its DER (PEM without the armour lines).
//!
//! The certificate's value is prepared once per connection, so requests only clone it.

use base64::Engine;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use rustls_pki_types::CertificateDer;
use switchyard_config::router::ForwardedClientCert;

/// `X-Forwarded-Client-Cert`.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What a client connection proved about itself.
#[derive(Debug, Clone, Default)]
pub enum ClientCert {
    /// Plain HTTP, or TLS without a client certificate.
    #[default]
    None,
    /// A verified client certificate, as the header value `sanitize_set` sends.
    Presented(HeaderValue),
}

impl ClientCert {
    /// From the peer certificates of a finished handshake (the leaf comes first).
    pub fn from_peer(certificates: Option<&[CertificateDer<'static>]>) -> Self {
        let leaf = certificates.and_then(<[_]>::first);
        let encoded = leaf.map(|der| base64::engine::general_purpose::STANDARD.encode(der.as_ref()));
        match encoded.and_then(|text| HeaderValue::from_str(&text).ok()) {
            Some(value) => Self::Presented(value),
            None => Self::None,
        }
    }
}

/// Applies the policy to a request's headers.
pub fn apply(headers: &mut HeaderMap, mode: ForwardedClientCert, cert: &ClientCert) {
    match (mode, cert) {
        (ForwardedClientCert::AlwaysForward, _) | (ForwardedClientCert::Forward, ClientCert::Presented(_)) => {}
        (ForwardedClientCert::Forward | ForwardedClientCert::SanitizeSet, ClientCert::None) => {
            headers.remove(X_FORWARDED_CLIENT_CERT);
        }
        (ForwardedClientCert::SanitizeSet, ClientCert::Presented(value)) => {
            headers.insert(X_FORWARDED_CLIENT_CERT, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("spoofed"));
        headers.append(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("twice"));
        headers
    }

    fn values(headers: &HeaderMap) -> Vec<&str> {
        headers.get_all(X_FORWARDED_CLIENT_CERT).iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn the_three_modes() {
        let der = CertificateDer::from(vec![1u8, 2, 3, 250]);
        let presented = ClientCert::from_peer(Some(std::slice::from_ref(&der)));
        assert!(matches!(&presented, ClientCert::Presented(v) if v == "AQID+g=="));
        let none = ClientCert::from_peer(None);
        let cases = [
            (ForwardedClientCert::AlwaysForward, &none, vec!["spoofed", "twice"]),
            (ForwardedClientCert::AlwaysForward, &presented, vec!["spoofed", "twice"]),
            (ForwardedClientCert::Forward, &none, vec![]),
            (ForwardedClientCert::Forward, &presented, vec!["spoofed", "twice"]),
            (ForwardedClientCert::SanitizeSet, &none, vec![]),
            (ForwardedClientCert::SanitizeSet, &presented, vec!["AQID+g=="]),
        ];
        for (mode, cert, expected) in cases {
            let mut headers = with_header();
            apply(&mut headers, mode, cert);
            assert_eq!(values(&headers), expected, "{mode:?} {cert:?}");
        }
    }
}
