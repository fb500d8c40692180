//! One acceptance rule (PROTOCOL.md §2): a message gets the same verdict from `verify_batch`,
//! whatever shares its batch, as from `Signed::verify` alone, and signatures that only a
//! non-strict or random-coefficient batch verifier accepts are refused.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use protocol::forge;
use protocol::testing::{sample_order, signing_key};
use protocol::{verify_batch, AccountId, Order, Reason, Signed};
use serde_json::Value;
use std::sync::OnceLock;

/// Largest batch the property tries: the exchange's batches are up to 256, but every size above a
/// few dozen exercises the same code, and debug-build verification is slow.
const BATCH_LEN_MAX: usize = 64;

/// Valid orders from a few traders, signed once for every case.
fn valid_pool() -> &'static [Signed<Order>] {
    static POOL: OnceLock<Vec<Signed<Order>>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..BATCH_LEN_MAX)
            .map(|index| {
                let key = signing_key(10 + (index % 8) as u8);
                let mut order = sample_order(&key);
                order.nonce = index as u64;
                Signed::sign(order, &key).expect("a sample order signs")
            })
            .collect()
    })
}

/// How a bad message is bad.
#[derive(Debug, Clone)]
enum Bad {
    /// R carries `EIGHT_TORSION[index]`, s recomputed (the attack of issue 11 for index 4).
    TorsionR(usize),
    NonCanonicalS,
    /// R = the identity with s = H(R‖A‖M)·a: the cofactorless equation holds.
    IdentityR,
    /// The same, with R's y encoded as p + 1.
    NonCanonicalIdentityR,
    /// Signed by a key other than the one the message names.
    WrongKey,
    /// One bit of the signature flipped.
    FlippedBit(usize),
    /// A valid signature of another message.
    OtherMessage,
    /// Signed by a key with a torsion component, the challenge a multiple of 8.
    MixedOrderKey,
}

impl Bad {
    fn reason(&self) -> Reason {
        match self {
            Bad::MixedOrderKey => Reason::InvalidPublicKey,
            _ => Reason::BadSignature,
        }
    }
}

fn bad() -> impl Strategy<Value = Bad> {
    prop_oneof![
        (1usize..8).prop_map(Bad::TorsionR),
        Just(Bad::TorsionR(4)),
        Just(Bad::NonCanonicalS),
        Just(Bad::IdentityR),
        Just(Bad::NonCanonicalIdentityR),
        Just(Bad::WrongKey),
        (0usize..512).prop_map(Bad::FlippedBit),
        Just(Bad::OtherMessage),
        Just(Bad::MixedOrderKey),
    ]
}

/// A bad order by the trader with key seed 30, nonce `nonce`.
fn bad_order(kind: &Bad, nonce: u64) -> Signed<Order> {
    let key: SigningKey = signing_key(30);
    let mut order = sample_order(&key);
    order.nonce = nonce;
    let good = Signed::sign(order.clone(), &key).expect("signs");
    let bytes = good.signing_bytes().to_vec();
    let signature = match kind {
        Bad::TorsionR(index) => forge::torsion_r(&key, &bytes, *index),
        Bad::NonCanonicalS => forge::s_plus_l(&good.signature),
        Bad::IdentityR => forge::identity_r(&key, &bytes, &forge::identity_bytes()),
        Bad::NonCanonicalIdentityR => forge::identity_r(&key, &bytes, &forge::IDENTITY_AS_P_PLUS_ONE),
        Bad::WrongKey => {
            use ed25519_dalek::Signer;
            signing_key(31).sign(&bytes).to_bytes()
        }
        Bad::FlippedBit(bit) => {
            let mut signature = good.signature;
            signature[bit / 8] ^= 1 << (bit % 8);
            signature
        }
        Bad::OtherMessage => {
            let mut other = order.clone();
            other.qty_wh.0 += 1;
            Signed::sign(other, &key).expect("signs").signature
        }
        Bad::MixedOrderKey => {
            order.account = AccountId(forge::mixed_order_key(&key));
            let unsigned = Signed::with_signature(order.clone(), [0; 64]).expect("a valid order");
            let signature = forge::mixed_order_signature(&key, unsigned.signing_bytes()).expect("a nonce");
            return Signed::with_signature(order, signature).expect("a valid order");
        }
    };
    Signed::with_signature(order, signature).expect("a valid order")
}

/// Asserts that the batch verdicts are the single verdicts and that exactly `bad` are refused.
fn check_batch(batch: &[Signed<Order>], bad: &[(usize, Reason)]) {
    let refs: Vec<&Signed<Order>> = batch.iter().collect();
    let batched: Vec<Option<Reason>> = verify_batch(&refs).into_iter().map(|r| r.err().map(|e| e.reason)).collect();
    let single: Vec<Option<Reason>> = batch.iter().map(|signed| signed.verify().err().map(|e| e.reason)).collect();
    assert_eq!(batched, single, "batch verdicts equal single verdicts");
    let expected: Vec<Option<Reason>> = (0..batch.len())
        .map(|index| bad.iter().find(|(position, _)| *position == index).map(|(_, reason)| *reason))
        .collect();
    assert_eq!(batched, expected, "exactly the bad ones are refused");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn one_bad_signature_in_a_random_batch_is_the_only_one_refused(
        len in 1..=BATCH_LEN_MAX,
        position in any::<prop::sample::Index>(),
        kind in bad(),
    ) {
        let mut batch: Vec<Signed<Order>> = valid_pool()[..len].to_vec();
        let position = position.index(len);
        batch[position] = bad_order(&kind, 1_000);
        check_batch(&batch, &[(position, kind.reason())]);
    }

    /// Several torsion-R signatures in one batch: two of order 2 cancel each other in a
    /// random-coefficient batch whenever their coefficients have the same parity.
    #[test]
    fn several_torsion_r_signatures_in_one_batch_are_all_refused(
        len in 8..=BATCH_LEN_MAX,
        bad in prop::collection::vec((any::<prop::sample::Index>(), prop_oneof![Just(4usize), 1usize..8]), 2..=4),
    ) {
        let mut batch: Vec<Signed<Order>> = valid_pool()[..len].to_vec();
        let mut positions: Vec<(usize, Reason)> = Vec::new();
        for (nonce, (position, torsion)) in bad.iter().enumerate() {
            let position = position.index(len);
            batch[position] = bad_order(&Bad::TorsionR(*torsion), 2_000 + nonce as u64);
            positions.retain(|(used, _)| *used != position);
            positions.push((position, Reason::BadSignature));
        }
        check_batch(&batch, &positions);
    }
}

/// For a key that passes the key checks, the rule is ed25519-dalek's `verify_strict`: checked on
/// every kind of bad signature by a good key (ours computes the equation itself).
#[test]
fn for_a_strict_key_the_rule_agrees_with_dalek_verify_strict() {
    let kinds = [
        Bad::TorsionR(4),
        Bad::TorsionR(1),
        Bad::TorsionR(2),
        Bad::NonCanonicalS,
        Bad::IdentityR,
        Bad::NonCanonicalIdentityR,
        Bad::WrongKey,
        Bad::FlippedBit(3),
        Bad::FlippedBit(300),
        Bad::OtherMessage,
    ];
    let key = protocol::wire::verifying_key(signing_key(30).verifying_key().to_bytes()).expect("a strict key");
    for kind in &kinds {
        let signed = bad_order(kind, 3_000);
        let dalek = key.verify_strict(signed.signing_bytes(), &ed25519_dalek::Signature::from_bytes(&signed.signature));
        assert!(dalek.is_err(), "{kind:?}: dalek refuses");
        assert_eq!(signed.verify().map_err(|e| e.reason), Err(Reason::BadSignature), "{kind:?}");
    }
    let good = &valid_pool()[0];
    assert!(good.verify().is_ok());
}

#[test]
fn a_mixed_order_key_is_refused_although_its_signature_satisfies_the_equation() {
    let signed = bad_order(&Bad::MixedOrderKey, 4_000);
    let dalek_key = ed25519_dalek::VerifyingKey::from_bytes(&signed.message.account.0).expect("a point");
    assert!(dalek_key
        .verify_strict(signed.signing_bytes(), &ed25519_dalek::Signature::from_bytes(&signed.signature))
        .is_ok());
    assert_eq!(signed.verify().unwrap_err().reason, Reason::InvalidPublicKey);
    assert_eq!(protocol::wire::verifying_key(signed.message.account.0).unwrap_err().reason, Reason::InvalidPublicKey);
}

#[test]
fn the_vectors_cover_every_signature_encoding_attack() {
    let vectors: Vec<Value> = serde_json::from_str(include_str!("../test-vectors.json")).expect("JSON");
    for (name, reason) in [
        ("torsion-r", "bad_signature"),
        ("non-canonical-r", "bad_signature"),
        ("small-order-r", "bad_signature"),
        ("non-canonical-s", "bad_signature"),
        ("small-order-key", "invalid_public_key"),
        ("mixed-order-key", "invalid_public_key"),
    ] {
        let vector = vectors.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("missing vector {name}"));
        assert_eq!(vector["reason"], reason, "{name}");
    }
}
