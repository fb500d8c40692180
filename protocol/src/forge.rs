//! Signatures that the acceptance rule (PROTOCOL.md §2, [`crate::strict`]) must refuse, made the way
//! an adversarial key holder would make them: for the test vectors and for tests in this and other
//! crates. Not for production. Each one is a real signature by the key's owner in every respect
//! but the one it breaks, so a verifier that skips that check accepts it.

use crate::wire::ProtocolError;
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha512};

/// The group order L, little-endian: adding it to `s` gives a non-canonical signature.
pub const GROUP_ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The identity point (0, 1) encoded with y = p + 1, a non-canonical encoding that decoders which
/// reduce y modulo p accept.
pub const IDENTITY_AS_P_PLUS_ONE: [u8; 32] = [
    0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
];

/// Tries at a nonce whose challenge is a multiple of 8; each try succeeds with probability 1/8, so
/// 1 000 tries fail with probability (7/8)^1000 < 10^-57.
const NONCE_TRIES_MAX: u64 = 1_000;

/// The challenge H(R ‖ A ‖ M) mod L.
fn challenge(r_bytes: &[u8; 32], key_bytes: &[u8; 32], signed_bytes: &[u8]) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(r_bytes);
    hash.update(key_bytes);
    hash.update(signed_bytes);
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// A deterministic nonce for forged signatures (they must be reproducible for the vectors).
fn nonce(key: &SigningKey, signed_bytes: &[u8], counter: u64) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(b"gridex forge nonce");
    hash.update(key.to_bytes());
    hash.update(counter.to_le_bytes());
    hash.update(signed_bytes);
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// `R ‖ s` with `s = r + H(R ‖ A ‖ M)·a`, for any encoding of R (whose discrete log is `r`) and of A.
fn signature_with(
    key: &SigningKey,
    key_bytes: &[u8; 32],
    r: &Scalar,
    r_bytes: &[u8; 32],
    signed_bytes: &[u8],
) -> [u8; 64] {
    let s = r + challenge(r_bytes, key_bytes, signed_bytes) * key.to_scalar();
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(r_bytes);
    signature[32..].copy_from_slice(s.as_bytes());
    signature
}

/// A signature whose R = rB + T carries the torsion point `EIGHT_TORSION[torsion]` (1..=7; 4 is
/// the point of order 2), with s recomputed for that R: the cofactored equation holds, the
/// cofactorless one does not.
pub fn torsion_r(key: &SigningKey, signed_bytes: &[u8], torsion: usize) -> [u8; 64] {
    let r = nonce(key, signed_bytes, 0);
    let point = ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[torsion % 8];
    signature_with(key, &key.verifying_key().to_bytes(), &r, &point.compress().to_bytes(), signed_bytes)
}

/// A signature with R = the identity (small order, r = 0) and s = H(R ‖ A ‖ M)·a: the cofactorless
/// equation holds. `r_bytes` is the identity's canonical encoding or [`IDENTITY_AS_P_PLUS_ONE`].
pub fn identity_r(key: &SigningKey, signed_bytes: &[u8], r_bytes: &[u8; 32]) -> [u8; 64] {
    signature_with(key, &key.verifying_key().to_bytes(), &Scalar::ZERO, r_bytes, signed_bytes)
}

/// The canonical encoding of the identity point.
pub fn identity_bytes() -> [u8; 32] {
    EdwardsPoint::default().compress().to_bytes()
}

/// The same signature with s + L: a non-canonical scalar (malleability).
pub fn s_plus_l(signature: &[u8; 64]) -> [u8; 64] {
    let mut out = *signature;
    let mut carry = 0u16;
    for (index, byte) in out[32..].iter_mut().enumerate() {
        let sum = u16::from(*byte) + u16::from(GROUP_ORDER_LE[index]) + carry;
        *byte = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    out
}

/// The key's point plus the torsion point of order 8: a mixed-order key whose owner still knows
/// the discrete log of its prime-order part.
pub fn mixed_order_key(key: &SigningKey) -> [u8; 32] {
    (key.verifying_key().to_edwards() + EIGHT_TORSION[1]).compress().to_bytes()
}

/// A signature by [`mixed_order_key`] over `signed_bytes` (which name that key as the signer), with
/// a nonce chosen so that the challenge is a multiple of 8: then the key's torsion component drops
/// out and the cofactorless equation holds.
pub fn mixed_order_signature(key: &SigningKey, signed_bytes: &[u8]) -> Result<[u8; 64], ProtocolError> {
    let mixed = mixed_order_key(key);
    for counter in 0..NONCE_TRIES_MAX {
        let r = nonce(key, signed_bytes, counter);
        let r_bytes = (ED25519_BASEPOINT_POINT * r).compress().to_bytes();
        if challenge(&r_bytes, &mixed, signed_bytes).as_bytes()[0].is_multiple_of(8) {
            return Ok(signature_with(key, &mixed, &r, &r_bytes, signed_bytes));
        }
    }
    Err(ProtocolError::new(crate::Reason::InternalError, "no nonce with a challenge divisible by 8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::traits::IsIdentity;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    fn key() -> SigningKey {
        crate::testing::signing_key(3)
    }

    #[test]
    fn a_torsion_r_signature_satisfies_only_the_cofactored_equation() {
        let key = key();
        let signature = torsion_r(&key, b"message", 4);
        let verifying = key.verifying_key();
        assert!(verifying.verify_strict(b"message", &Signature::from_bytes(&signature)).is_err());
        // [8]([s]B − R − [k]A) = identity: the signature is a real one but for the torsion.
        let mut r_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&signature[..32]);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&signature[32..]);
        let r = curve25519_dalek::edwards::CompressedEdwardsY(r_bytes).decompress().expect("a point");
        let s = Scalar::from_canonical_bytes(s_bytes).expect("canonical s");
        let k = challenge(&r_bytes, &verifying.to_bytes(), b"message");
        let residue = ED25519_BASEPOINT_POINT * s - r - verifying.to_edwards() * k;
        assert!(!residue.is_identity());
        assert!(residue.mul_by_cofactor().is_identity());
    }

    #[test]
    fn a_mixed_order_key_signature_passes_the_cofactorless_equation() {
        let key = key();
        let signature = mixed_order_signature(&key, b"message").expect("a nonce");
        let mixed = VerifyingKey::from_bytes(&mixed_order_key(&key)).expect("a point");
        assert!(!mixed.is_weak());
        assert!(mixed.verify_strict(b"message", &Signature::from_bytes(&signature)).is_ok());
    }

    #[test]
    fn an_identity_r_signature_passes_the_equation_of_a_non_strict_verifier() {
        let key = key();
        let signature = identity_r(&key, b"message", &identity_bytes());
        assert!(key.verifying_key().verify(b"message", &Signature::from_bytes(&signature)).is_ok());
        assert!(key.verifying_key().verify_strict(b"message", &Signature::from_bytes(&signature)).is_err());
    }
}
