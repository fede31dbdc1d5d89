//! The route-service signature: proof that a request coming back from a route service was sent there by a router
//! of this deployment, recently, for this URL.
//!
//! The scheme is gorouter's, so a fleet that mixes both routers (during a migration) accepts each other's
//! signatures:
//!
//! - **Key.** PBKDF2-HMAC-SHA256 of `route_services_secret`, empty salt, 100 001 iterations, 16 bytes: an AES-128
//!   key. It is derived once at start-up (the iterations make that take a few milliseconds).
//! - **Plaintext.** JSON `{"forwarded_url": "<X-CF-Forwarded-Url>", "requested_time": "<RFC 3339, ns>"}`.
//! - **Sealing.** AES-128-GCM with a fresh random 12-byte nonce and no associated data; the 16-byte tag follows the
//!   ciphertext.
//! - **Headers.** `X-CF-Proxy-Signature` is the sealed bytes in URL-safe base64 (padded).
//!   `X-CF-Proxy-Metadata` is URL-safe base64 of JSON `{"nonce": "<standard base64 of the nonce>"}`.
//! - **Checking.** Open with the current key, then with `route_services_secret_decrypt_only` (a secret being
//!   rotated out); a signature neither opens is invalid. One whose `requested_time` is more than
//!   `route_services_timeout` ago is expired.
//!
//! Everything here is pure: the caller passes the time and the nonce, so the tests are exact.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE};
use base64::engine::DecodePaddingMode;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

const PBKDF2_ITERATIONS: u32 = 100_001;

/// Decoding accepts the headers with or without padding; encoding always pads, as gorouter does.
const URL_SAFE_LENIENT: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::URL_SAFE, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));
const STANDARD_LENIENT: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing, not base64, or not the JSON expected.
    #[error("route service signature is malformed: {0}")]
    Malformed(&'static str),
    /// No configured secret opens it (forged, tampered with, or from another deployment).
    #[error("route service signature does not verify")]
    Invalid,
    /// It verifies, but was made longer ago than `route_services_timeout`.
    #[error("route service signature expired {0:?} ago")]
    Expired(Duration),
}

/// The two header values of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `X-CF-Proxy-Signature`.
    pub signature: String,
    /// `X-CF-Proxy-Metadata`.
    pub metadata: String,
}

#[derive(Serialize, Deserialize)]
struct Contents {
    forwarded_url: String,
    requested_time: String,
}

#[derive(Serialize, Deserialize)]
struct Metadata {
    nonce: String,
}

/// One AES-GCM key derived from a secret.
pub struct SigningKey(LessSafeKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<secret>)")
    }
}

impl SigningKey {
    /// Derives the key from a secret.
    pub fn derive(secret: &str) -> Option<Self> {
        let mut key = [0u8; 16];
        let iterations = NonZeroU32::new(PBKDF2_ITERATIONS)?;
        ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, iterations, &[], secret.as_bytes(), &mut key);
        UnboundKey::new(&AES_128_GCM, &key).ok().map(|k| Self(LessSafeKey::new(k)))
    }

    fn open(&self, sealed: &[u8], nonce: [u8; NONCE_LEN]) -> Option<Vec<u8>> {
        let mut buffer = sealed.to_vec();
        let plain = self.0.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buffer).ok()?;
        Some(plain.to_vec())
    }
}

/// The signing key and the one being rotated out.
#[derive(Debug)]
pub struct Keys {
    current: SigningKey,
    previous: Option<SigningKey>,
}

/// RFC 3339 with nanoseconds in UTC, the way Go writes `time.Time`.
fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

/// Reads RFC 3339 with any fraction and any UTC offset (Go writes the local offset of the router that signed).
fn parse_time(text: &str) -> Option<SystemTime> {
    if text.ends_with('Z') || text.ends_with("+00:00") {
        return humantime::parse_rfc3339(text).ok();
    }
    let split = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..split)?, text.get(split..)?.as_bytes());
    let (sign, hours, minutes) = match offset {
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = |a: u8, b: u8| (a.is_ascii_digit() && b.is_ascii_digit()).then(|| u64::from(a - b'0') * 10 + u64::from(b - b'0'));
            (*sign, digits(*h1, *h2)?, digits(*m1, *m2)?)
        }
        _ => return None,
    };
    let as_if_utc = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    if sign == b'+' { as_if_utc.checked_sub(shift) } else { as_if_utc.checked_add(shift) }
}

impl Keys {
    /// Keys from the configured secrets; `None` when no secret is set (route services are then unsupported).
    pub fn new(secret: &str, decrypt_only: &str) -> Option<Self> {
        if secret.is_empty() {
            return None;
        }
        let previous = if decrypt_only.is_empty() { None } else { SigningKey::derive(decrypt_only) };
        Some(Self { current: SigningKey::derive(secret)?, previous })
    }

    /// Signs `forwarded_url` as requested at `now`, sealed with `nonce` (which must be fresh and random).
    pub fn sign(&self, forwarded_url: &str, now: SystemTime, nonce: [u8; NONCE_LEN]) -> Option<Signed> {
        let contents = Contents { forwarded_url: forwarded_url.to_owned(), requested_time: format_time(now) };
        let mut sealed = serde_json::to_vec(&contents).ok()?;
        self.current.0.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed).ok()?;
        let metadata = serde_json::to_vec(&Metadata { nonce: STANDARD.encode(nonce) }).ok()?;
        Some(Signed { signature: URL_SAFE.encode(&sealed), metadata: URL_SAFE.encode(metadata) })
    }

    /// Checks a signature at `now`; returns the URL it was made for.
    pub fn verify(&self, signature: &[u8], metadata: &[u8], now: SystemTime, timeout: Duration) -> Result<String, SignatureError> {
        let metadata = URL_SAFE_LENIENT.decode(metadata).map_err(|_| SignatureError::Malformed("metadata is not base64"))?;
        let metadata: Metadata = serde_json::from_slice(&metadata).map_err(|_| SignatureError::Malformed("metadata is not the expected JSON"))?;
        let nonce = STANDARD_LENIENT.decode(&metadata.nonce).map_err(|_| SignatureError::Malformed("nonce is not base64"))?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SignatureError::Malformed("nonce has the wrong length"))?;
        let sealed = URL_SAFE_LENIENT.decode(signature).map_err(|_| SignatureError::Malformed("signature is not base64"))?;
        let plain = self
            .current
            .open(&sealed, nonce)
            .or_else(|| self.previous.as_ref().and_then(|key| key.open(&sealed, nonce)))
            .ok_or(SignatureError::Invalid)?;
        let contents: Contents = serde_json::from_slice(&plain).map_err(|_| SignatureError::Malformed("signature is not the expected JSON"))?;
        let requested = parse_time(&contents.requested_time).ok_or(SignatureError::Malformed("requested_time is not an RFC 3339 time"))?;
        let age = now.duration_since(requested).unwrap_or(Duration::ZERO);
        if age > timeout {
            return Err(SignatureError::Expired(age - timeout));
        }
        Ok(contents.forwarded_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];
    const MINUTE: Duration = Duration::from_secs(60);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    #[test]
    fn a_signature_round_trips_until_it_expires() {
        let keys = Keys::new("s3cret", "").unwrap();
        let signed = keys.sign("https://app.example.com/a?b=1", at(0), NONCE).unwrap();
        let verify = |now| keys.verify(signed.signature.as_bytes(), signed.metadata.as_bytes(), now, MINUTE);
        assert_eq!(verify(at(60)).unwrap(), "https://app.example.com/a?b=1");
        assert_eq!(verify(at(61)), Err(SignatureError::Expired(Duration::from_secs(1))));
    }

    #[test]
    fn headers_have_gorouters_shape() {
        let keys = Keys::new("s3cret", "").unwrap();
        let signed = keys.sign("http://a.com/", at(0), NONCE).unwrap();
        let metadata = String::from_utf8(URL_SAFE.decode(&signed.metadata).unwrap()).unwrap();
        assert_eq!(metadata, r#"{"nonce":"BwcHBwcHBwcHBwcH"}"#);
        // The plaintext JSON plus the 16-byte tag.
        let plain_len = r#"{"forwarded_url":"http://a.com/","requested_time":"2023-11-14T22:13:20.000000000Z"}"#.len();
        assert_eq!(URL_SAFE.decode(&signed.signature).unwrap().len(), plain_len + 16);
    }

    #[test]
    fn tampering_other_secrets_and_rotation() {
        let keys = Keys::new("s3cret", "").unwrap();
        let signed = keys.sign("http://a.com/", at(0), NONCE).unwrap();
        let mut sealed = URL_SAFE.decode(&signed.signature).unwrap();
        sealed[3] ^= 1;
        let tampered = URL_SAFE.encode(&sealed);
        assert_eq!(keys.verify(tampered.as_bytes(), signed.metadata.as_bytes(), at(1), MINUTE), Err(SignatureError::Invalid));
        let other = Keys::new("another", "").unwrap();
        assert_eq!(other.verify(signed.signature.as_bytes(), signed.metadata.as_bytes(), at(1), MINUTE), Err(SignatureError::Invalid));
        let rotated = Keys::new("another", "s3cret").unwrap();
        assert!(rotated.verify(signed.signature.as_bytes(), signed.metadata.as_bytes(), at(1), MINUTE).is_ok());
        assert!(matches!(keys.verify(b"%%%", signed.metadata.as_bytes(), at(1), MINUTE), Err(SignatureError::Malformed(_))));
        assert!(matches!(keys.verify(signed.signature.as_bytes(), b"e30", at(1), MINUTE), Err(SignatureError::Malformed(_))));
        assert!(Keys::new("", "x").is_none());
    }

    #[test]
    fn times_with_offsets_and_short_fractions() {
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(at(0)));
        assert_eq!(parse_time("2023-11-14T23:13:20.5+01:00"), Some(at(0) + Duration::from_millis(500)));
        assert_eq!(parse_time("2023-11-14T21:13:20-01:00"), Some(at(0)));
        assert_eq!(parse_time(&format_time(at(5))), Some(at(5)));
        assert_eq!(parse_time("yesterday"), None);
    }
}
