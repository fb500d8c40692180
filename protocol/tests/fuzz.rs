//! Parsers never panic: random bytes and mutations of valid messages go through every parser, and
//! every failure carries a reason code.

use proptest::prelude::*;
use protocol::testing::{sample_order, sample_reading, signing_key};
use protocol::{decode, BookSnapshot, Command, Reading, Reject, Signed, SlotRoot, Statement, Trade};

fn every_parser(bytes: &[u8]) {
    let _ = Signed::<Reading>::parse(bytes).map(|signed| signed.verify());
    let _ = Signed::<SlotRoot>::parse(bytes).map(|signed| signed.verify());
    let _ = Command::parse(bytes).map(|command| command.verify());
    let _ = decode::<Trade>(bytes);
    let _ = decode::<Reject>(bytes);
    let _ = decode::<BookSnapshot>(bytes);
    let _ = decode::<Statement>(bytes);
    let _ = protocol::canonical::parse_strict(bytes);
}

fn valid_messages() -> Vec<Vec<u8>> {
    let key = signing_key(7);
    vec![
        Signed::sign(sample_reading(&key), &key).expect("signs").to_json(),
        Signed::sign(sample_order(&key), &key).expect("signs").to_json(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Delete { at: usize },
    Insert { at: usize, byte: u8 },
    Truncate { at: usize },
    Splice { at: usize, text: String },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "1.5",
                "null",
                "-1",
                "9007199254740993",
                "\"\"",
                "[]",
                "{}",
                "\"x\":1,",
                "\\u0000",
                "1e9",
                "true"
            ])
        )
            .prop_map(|(at, text)| Mutation::Splice { at, text: text.to_owned() }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len().max(1);
        match mutation {
            Mutation::Flip { at, bit } if !bytes.is_empty() => bytes[at % len] ^= 1 << bit,
            Mutation::Delete { at } if !bytes.is_empty() => {
                bytes.remove(at % len);
            }
            Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), *byte),
            Mutation::Truncate { at } => bytes.truncate(at % len),
            Mutation::Splice { at, text } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, text.bytes());
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_never_panic_a_parser(bytes in prop::collection::vec(any::<u8>(), 0..1_500)) {
        every_parser(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic_and_never_verify_unless_unchanged(
        which in 0usize..2,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let original = valid_messages().swap_remove(which);
        let mutated = apply(original.clone(), &mutations);
        every_parser(&mutated);
        // A mutation that still parses and verifies must not have changed what was signed.
        if let Ok(command) = Command::parse(&mutated) {
            if command.verify().is_ok() {
                let again = Command::parse(&original).expect("the original parses");
                prop_assert_eq!(command, again);
            }
        }
        if let Ok(signed) = Signed::<Reading>::parse(&mutated) {
            if signed.verify().is_ok() {
                prop_assert_eq!(signed, Signed::<Reading>::parse(&original).expect("the original parses"));
            }
        }
    }
}
