//! Who is calling: traders by an ed25519 signature of their account key over the request, utilities
//! by an API key with the utility role ([`crate::api_keys`]).
//!
//! Trader requests carry `X-Gridex-Account`, `X-Gridex-Timestamp` (unix ms) and
//! `X-Gridex-Signature` (128 hex digits): ed25519 over `gridex/v1/request\n` followed by the canonical
//! JSON of `{"account", "body_sha256", "method", "path", "ts_ms"}` where `path` includes the query.

use crate::error::ApiError;
use actix_web::HttpRequest;
use ed25519_dalek::{Signature, Signer, SigningKey};
use protocol::AccountId;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Mutex;

pub const HEADER_ACCOUNT: &str = "x-gridex-account";
pub const HEADER_TIMESTAMP: &str = "x-gridex-timestamp";
pub const HEADER_SIGNATURE: &str = "x-gridex-signature";
/// The domain tag of request signatures; distinct from every message tag so a signed request can
/// never be replayed as an order and vice versa.
pub const REQUEST_DOMAIN_TAG: &[u8] = b"gridex/v1/request\n";
/// How far a request's timestamp may be from the server's clock: a minute covers clock skew and
/// slow networks while keeping the window in which a captured request could be replayed short.
pub const REQUEST_WINDOW_MS: i64 = 60_000;

/// The exact bytes a trader signs for a request.
pub fn request_signing_bytes(account: &AccountId, method: &str, path: &str, body: &[u8], ts_ms: i64) -> Vec<u8> {
    let document = json!({
        "account": account.to_hex(),
        "body_sha256": hex::encode(Sha256::digest(body)),
        "method": method,
        "path": path,
        "ts_ms": ts_ms,
    });
    let mut bytes = REQUEST_DOMAIN_TAG.to_vec();
    // The document holds only strings and a non-negative integer checked below 2^53, so it is in
    // the restricted set; an out-of-range timestamp simply produces bytes nobody signed.
    bytes.extend(protocol::canonical::canonical_bytes(&document).unwrap_or_default());
    bytes
}

/// Signs a request the way a client must (used by tests, the demo and Rust clients).
pub fn sign_request(key: &SigningKey, method: &str, path: &str, body: &[u8], ts_ms: i64) -> [(String, String); 3] {
    let account = AccountId::from_verifying_key(&key.verifying_key());
    let signature = key.sign(&request_signing_bytes(&account, method, path, body, ts_ms));
    [
        (HEADER_ACCOUNT.to_owned(), account.to_hex()),
        (HEADER_TIMESTAMP.to_owned(), ts_ms.to_string()),
        (HEADER_SIGNATURE.to_owned(), hex::encode(signature.to_bytes())),
    ]
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Result<&'a str, ApiError> {
    let value = request
        .headers()
        .get(name)
        .ok_or_else(|| ApiError::unauthorized("missing_signature", format!("missing header {name}")))?;
    value.to_str().map_err(|_| ApiError::unauthorized("malformed_signature", format!("header {name} is not ASCII")))
}

/// Checks a trader's request signature against `now_ms`; returns the account that signed it.
/// Whether the account is registered, and whether the request was seen before
/// ([`UsedSignatures`]), is checked by the caller.
pub fn verify_request(request: &HttpRequest, body: &[u8], now_ms: i64) -> Result<AccountId, ApiError> {
    verify_signed(request, body, now_ms).map(|signed| signed.account)
}

/// A request whose signature verified: who signed it, when, and the digest of what was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedRequest {
    pub account: AccountId,
    pub ts_ms: i64,
    /// SHA-256 of the signed bytes: the identity of the request for replay detection. The same
    /// request (account, method, path, body, timestamp) has one digest whatever signature it carries.
    pub digest: [u8; 32],
}

/// Like [`verify_request`], also returning the timestamp and digest for [`UsedSignatures`].
pub fn verify_signed(request: &HttpRequest, body: &[u8], now_ms: i64) -> Result<SignedRequest, ApiError> {
    let account = AccountId::parse(header(request, HEADER_ACCOUNT)?)
        .map_err(|_| ApiError::unauthorized("malformed_signature", "X-Gridex-Account is 64 lowercase hex digits"))?;
    let ts_ms: i64 = header(request, HEADER_TIMESTAMP)?
        .parse()
        .map_err(|_| ApiError::unauthorized("malformed_signature", "X-Gridex-Timestamp is unix milliseconds"))?;
    let signature_hex = header(request, HEADER_SIGNATURE)?;
    let mut signature = [0u8; 64];
    if signature_hex.len() != 128 || hex::decode_to_slice(signature_hex, &mut signature).is_err() {
        return Err(ApiError::unauthorized("malformed_signature", "X-Gridex-Signature is 128 hex digits"));
    }
    if ts_ms < now_ms - REQUEST_WINDOW_MS {
        return Err(ApiError::unauthorized("timestamp_too_old", "the request timestamp is outside ±60 s"));
    }
    if ts_ms > now_ms + REQUEST_WINDOW_MS {
        return Err(ApiError::unauthorized("timestamp_in_future", "the request timestamp is outside ±60 s"));
    }
    let path = request.uri().path_and_query().map_or_else(|| request.path().to_owned(), |pq| pq.as_str().to_owned());
    let bytes = request_signing_bytes(&account, request.method().as_str(), &path, body, ts_ms);
    let key = protocol::wire::verifying_key(account.0)
        .map_err(|error| ApiError::unauthorized("invalid_public_key", error.detail))?;
    key.verify_strict(&bytes, &Signature::from_bytes(&signature))
        .map_err(|_| ApiError::unauthorized("bad_signature", "the request signature does not verify"))?;
    Ok(SignedRequest { account, ts_ms, digest: Sha256::digest(&bytes).into() })
}

/// Requests remembered at most. An entry is kept until its timestamp leaves the window (at most
/// 2 × [`REQUEST_WINDOW_MS`] = 120 s, a timestamp may be 60 s ahead), about 100 bytes each: 200,000
/// entries (about 20 MB) sustain 1,600 signed requests a second, far above what the households of
/// one server send. When full, new requests are refused (503) rather than accepted unremembered.
pub const USED_SIGNATURES_MAX: usize = 200_000;

/// The signed trader requests accepted within the window, so each is accepted once: a captured
/// request replayed within its 60 s is refused with 409 `replayed_request`. Owns only memory, so
/// the guarantee holds per web server: with several servers behind one address, a request
/// replayed to another server is not detected; run one web server, or route each account to
/// the same server (sticky by `X-Gridex-Account`).
#[derive(Debug, Default)]
pub struct UsedSignatures {
    /// (timestamp, digest), ordered by timestamp so expired entries split off in one step.
    seen: Mutex<BTreeSet<(i64, [u8; 32])>>,
}

impl UsedSignatures {
    /// Records `signed` at `now_ms`; refuses it if it was recorded before.
    pub fn accept_once(&self, signed: &SignedRequest, now_ms: i64) -> Result<(), ApiError> {
        // A poisoned lock only means another request panicked mid-insert; the set is still valid.
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Entries older than the window can go: their timestamp alone now refuses them.
        let kept = seen.split_off(&(now_ms - REQUEST_WINDOW_MS, [0u8; 32]));
        *seen = kept;
        if seen.contains(&(signed.ts_ms, signed.digest)) {
            return Err(ApiError::conflict(
                "replayed_request",
                "this signed request was already accepted; sign each request anew (a new timestamp)",
            ));
        }
        if seen.len() >= USED_SIGNATURES_MAX {
            return Err(ApiError::unavailable("too many signed requests in the last minute; retry shortly"));
        }
        seen.insert((signed.ts_ms, signed.digest));
        Ok(())
    }
}

/// Utility API keys are checked by [`crate::api_keys::require_role`].
pub use crate::api_keys::require_role;

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn signed(key: &SigningKey, path: &str, ts_ms: i64) -> HttpRequest {
        let mut request = TestRequest::get().uri(path);
        for (name, value) in sign_request(key, "GET", path, b"", ts_ms) {
            request = request.insert_header((name, value));
        }
        request.to_http_request()
    }

    #[test]
    fn a_correctly_signed_request_names_its_account() {
        let key = protocol::testing::signing_key(3);
        let account = verify_request(&signed(&key, "/api/v1/me/orders?x=1", 1_000_000), b"", 1_000_000).expect("ok");
        assert_eq!(account, AccountId::from_verifying_key(&key.verifying_key()));
    }

    #[test]
    fn a_request_signed_for_another_path_or_time_is_refused() {
        let key = protocol::testing::signing_key(3);
        let request = signed(&key, "/api/v1/me/orders", 1_000_000);
        assert_eq!(verify_request(&request, b"x", 1_000_000).unwrap_err().code, "bad_signature");
        assert_eq!(verify_request(&request, b"", 1_000_000 + 61_000).unwrap_err().code, "timestamp_too_old");
        assert_eq!(verify_request(&request, b"", 1_000_000 - 61_000).unwrap_err().code, "timestamp_in_future");
    }

    #[test]
    fn a_request_is_accepted_once_and_forgotten_after_the_window() {
        let key = protocol::testing::signing_key(3);
        let used = UsedSignatures::default();
        let first = verify_signed(&signed(&key, "/api/v1/me/orders", 1_000_000), b"", 1_000_000).expect("ok");
        used.accept_once(&first, 1_000_000).expect("first time");
        assert_eq!(used.accept_once(&first, 1_000_001).unwrap_err().code, "replayed_request");
        let other = verify_signed(&signed(&key, "/api/v1/me/orders", 1_000_001), b"", 1_000_001).expect("ok");
        used.accept_once(&other, 1_000_001).expect("another timestamp is another request");
        let late_ms = 1_000_000 + REQUEST_WINDOW_MS + 1;
        let late = verify_signed(&signed(&key, "/api/v1/me/orders", late_ms), b"", late_ms).expect("ok");
        used.accept_once(&late, late_ms).expect("a new request");
        // `first` left the window (its timestamp alone refuses it now) and was forgotten.
        assert_eq!(used.seen.lock().expect("lock").len(), 2);
    }

    #[test]
    fn the_signed_document_is_canonical_json_with_sorted_keys() {
        let key = protocol::testing::signing_key(3);
        let account = AccountId::from_verifying_key(&key.verifying_key());
        let bytes = request_signing_bytes(&account, "GET", "/p", b"", 5);
        let text = String::from_utf8(bytes).expect("utf-8");
        let expected = format!(
            "gridex/v1/request\n{{\"account\":\"{account}\",\"body_sha256\":\"{}\",\"method\":\"GET\",\"path\":\"/p\",\"ts_ms\":5}}",
            hex::encode(Sha256::digest(b""))
        );
        assert_eq!(text, expected);
    }
}
