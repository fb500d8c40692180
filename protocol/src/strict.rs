//! The one acceptance rule for ed25519 signatures (PROTOCOL.md §2), behind both
//! [`crate::Signed::verify`] and [`crate::verify_batch`].
//!
//! A signature `R ‖ s` by the key `A` over the signed bytes `M` is accepted exactly when:
//!
//! 1. `A` is the canonical encoding of a curve point that is not of small order and lies in the
//!    prime-order subgroup (no torsion component) — otherwise `invalid_public_key`;
//! 2. `s` is below the group order `L` — otherwise `bad_signature`;
//! 3. `R` is the canonical encoding of a point that is not of small order and lies in the
//!    prime-order subgroup, and the cofactorless equation `[s]B = R + [H(R ‖ A ‖ M)]A` holds —
//!    otherwise `bad_signature`.
//!
//! Step 3 is evaluated as: compute `E = [s]B − [k]A` (k = H(R ‖ A ‖ M) mod L), require that the
//! canonical encoding of `E` equals the bytes of `R` and that `E` is not of small order. That is the
//! same condition: equal bytes make `R` canonical and equal to `E`, and `E` is torsion-free because
//! `B` and `A` are. No randomness is involved, so a message's verdict cannot depend on the other
//! messages verified with it; [`verify_many`] only shares the field inversion of the compressions.
//!
//! Why not ed25519-dalek's `verify_batch`: it checks a random linear combination of the
//! equations, which cancels a torsion component of `R` whenever that message's coefficient is even
//! (the bug of issue 11). It is sound only once every `R` is known to be torsion-free, and that check
//! (a multiplication by L, about 250 doublings) costs more than the batch saves — measured in
//! `exchange/BENCHMARKS.md`, *ingest*.
//!
//! This module owns the rule and the per-thread cache of keys that passed step 1.

use crate::reason::Reason;
use crate::wire::ProtocolError;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};
use std::cell::RefCell;
use std::collections::HashMap;

/// Keys remembered per thread; the cache is emptied when it is full. 65 536 keys take about 12 MiB
/// per verifying thread and cover every device and account of a large deployment.
pub const KEY_CACHE_LEN_MAX: usize = 65_536;

/// A public key that passed step 1 of the rule.
#[derive(Debug, Clone, Copy)]
pub struct StrictKey {
    /// The key as sent (canonical, so the only encoding of its point).
    bytes: [u8; 32],
    /// −A, ready for `[s]B + [k](−A)`.
    minus_point: EdwardsPoint,
}

thread_local! {
    /// Keys of recent signers that passed step 1. Decompressing a point and checking its subgroup
    /// costs most of a verification, and a sender signs many messages with one key. An invalid key
    /// is never cached.
    static KEY_CACHE: RefCell<HashMap<[u8; 32], StrictKey>> = RefCell::new(HashMap::new());
}

/// One message to verify: the signer's key as sent, the signed bytes and the signature.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub signer: &'a [u8; 32],
    pub signed_bytes: &'a [u8],
    pub signature: &'a [u8; 64],
}

/// Whether `bytes` encodes its y coordinate canonically (y < p = 2^255 − 19, little-endian, the
/// top bit being the sign of x). The other non-canonical encodings, "x = 0 with the sign bit set",
/// exist only for (0, 1) and (0, −1), which are of small order and refused as such.
fn y_is_canonical(bytes: &[u8; 32]) -> bool {
    let top_is_all_ones = bytes[31] & 0x7f == 0x7f && bytes[1..31].iter().all(|&byte| byte == 0xff);
    // With bytes 1..=31 at their maximum, y ≥ p exactly when the lowest byte is ≥ 0xed (p's lowest).
    !(top_is_all_ones && bytes[0] >= 0xed)
}

/// Whether `point` lies in the prime-order subgroup: [L]P = identity, computed as [L − 1]P + P
/// (L itself is not a `Scalar`), in variable time (keys are public).
fn is_torsion_free(point: &EdwardsPoint) -> bool {
    let l_minus_one = -Scalar::ONE;
    (EdwardsPoint::vartime_double_scalar_mul_basepoint(&l_minus_one, point, &Scalar::ZERO) + point).is_identity()
}

/// Step 1: decodes a key that must be canonical, not of small order and torsion-free; the error
/// names the first failed condition.
fn prime_order_point(bytes: &[u8; 32]) -> Result<EdwardsPoint, &'static str> {
    if !y_is_canonical(bytes) {
        return Err("non-canonical point encoding");
    }
    let point = CompressedEdwardsY(*bytes).decompress().ok_or("not a curve point")?;
    if point.is_small_order() {
        return Err("point of small order");
    }
    if !is_torsion_free(&point) {
        return Err("point with a torsion component (mixed order)");
    }
    Ok(point)
}

fn invalid_key(detail: &str) -> ProtocolError {
    ProtocolError::new(Reason::InvalidPublicKey, format!("signer key: {detail}"))
}

/// Step 1 of the rule, refused as `invalid_public_key` when the key is not a canonical point, is
/// of small order, or has a torsion component (mixed order).
pub fn strict_key(bytes: &[u8; 32]) -> Result<StrictKey, ProtocolError> {
    let point = prime_order_point(bytes).map_err(invalid_key)?;
    Ok(StrictKey { bytes: *bytes, minus_point: -point })
}

/// [`strict_key`] as an ed25519-dalek key, for callers that verify with it. Its `verify_strict`
/// gives this rule's verdicts for such a key: its R checks (canonical bytes, not of small order)
/// are ours, and a torsion component in R breaks the cofactorless equation when A has none.
pub fn strict_verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey, ProtocolError> {
    strict_key(bytes)?;
    VerifyingKey::from_bytes(bytes).map_err(|_| invalid_key("not a curve point"))
}

/// [`strict_key`], remembered per thread for valid keys.
pub fn cached_strict_key(bytes: &[u8; 32]) -> Result<StrictKey, ProtocolError> {
    if let Some(key) = KEY_CACHE.with(|cache| cache.borrow().get(bytes).copied()) {
        return Ok(key);
    }
    let key = strict_key(bytes)?;
    KEY_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= KEY_CACHE_LEN_MAX {
            cache.clear();
        }
        cache.insert(*bytes, key);
    });
    Ok(key)
}

fn bad_signature(detail: &str) -> ProtocolError {
    ProtocolError::new(Reason::BadSignature, detail.to_owned())
}

fn split(signature: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    s.copy_from_slice(&signature[32..]);
    (r, s)
}

/// Steps 1 and 2, then `E = [s]B − [H(R ‖ A ‖ M)]A`: the point that R must encode.
fn expected_r(item: &Item<'_>) -> Result<EdwardsPoint, ProtocolError> {
    let key = cached_strict_key(item.signer)?;
    let (r, s) = split(item.signature);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s))
        .ok_or_else(|| bad_signature("signature: s is not below the group order"))?;
    let mut hash = Sha512::new();
    hash.update(r);
    hash.update(key.bytes);
    hash.update(item.signed_bytes);
    let challenge = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
    Ok(EdwardsPoint::vartime_double_scalar_mul_basepoint(&challenge, &key.minus_point, &s))
}

/// Step 3, given E and its canonical encoding.
fn r_matches(
    item: &Item<'_>,
    expected: &EdwardsPoint,
    expected_bytes: &CompressedEdwardsY,
) -> Result<(), ProtocolError> {
    if expected_bytes.as_bytes()[..] != item.signature[..32] {
        return Err(bad_signature("signature does not verify"));
    }
    if expected.is_small_order() {
        return Err(bad_signature("signature: R is of small order"));
    }
    Ok(())
}

/// The whole rule for one message.
pub fn verify_one(item: &Item<'_>) -> Result<(), ProtocolError> {
    let expected = expected_r(item)?;
    r_matches(item, &expected, &expected.compress())
}

/// The rule for many messages: exactly [`verify_one`]'s verdict for each (the same computation
/// per message), with the inversions of the compressions shared.
pub fn verify_many(items: &[Item<'_>]) -> Vec<Result<(), ProtocolError>> {
    let expected: Vec<Result<EdwardsPoint, ProtocolError>> = items.iter().map(expected_r).collect();
    let points: Vec<EdwardsPoint> = expected.iter().filter_map(|point| point.as_ref().ok().copied()).collect();
    let mut compressed = EdwardsPoint::compress_batch_alloc(&points).into_iter();
    items
        .iter()
        .zip(expected)
        .map(|(item, point)| {
            let point = point?;
            let bytes = compressed.next().unwrap_or_else(|| point.compress());
            r_matches(item, &point, &bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_y_check_refuses_exactly_p_and_above() {
        // p − 1 = 2^255 − 20: canonical; p: not; p + 18 = 2^255 − 1: not. The sign bit is ignored.
        let mut p_minus_one = [0xff; 32];
        p_minus_one[0] = 0xec;
        p_minus_one[31] = 0x7f;
        assert!(y_is_canonical(&p_minus_one));
        let mut p = p_minus_one;
        p[0] = 0xed;
        assert!(!y_is_canonical(&p));
        assert!(!y_is_canonical(&[0xff; 32]));
        let mut signed_p = p;
        signed_p[31] = 0xff;
        assert!(!y_is_canonical(&signed_p));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(y_is_canonical(&one));
    }

    #[test]
    fn the_basepoint_is_torsion_free_and_a_torsion_point_added_to_it_is_not() {
        let base = curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
        assert!(is_torsion_free(&base));
        for torsion in &curve25519_dalek::constants::EIGHT_TORSION[1..] {
            assert!(!is_torsion_free(&(base + torsion)));
            assert_eq!(is_torsion_free(&(base + torsion)), (base + torsion).is_torsion_free());
        }
    }
}
