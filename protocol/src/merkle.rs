//! Merkle trees over settlement statements, so a household can check that its statement is part of
//! the slot root the operator signed.
//!
//! Leaf hash = SHA-256(0x00 ‖ canonical JSON of the statement, `type` included).
//! Node hash = SHA-256(0x01 ‖ left ‖ right). Leaves are ordered by account id. A level with an odd
//! number of nodes carries its last node up unchanged. The root of zero leaves is SHA-256("").

use crate::messages::Statement;
use crate::wire::{encode, ProtocolError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(statement: &Statement) -> Result<Hash, ProtocolError> {
    let bytes = encode(statement)?;
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(&bytes);
    Ok(hasher.finalize().into())
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Which side of the path a proof step's sibling is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiblingSide {
    Left,
    Right,
}

/// One step of an inclusion proof: the sibling hash (hex) and its side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    pub sibling: String,
    pub side: SiblingSide,
}

/// The root of `leaves` (already hashed, in order).
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest(b"").into();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
}

/// The inclusion proof of leaf `index`; `None` when out of range.
pub fn proof(leaves: &[Hash], index: usize) -> Option<Vec<ProofStep>> {
    if index >= leaves.len() {
        return None;
    }
    let mut steps = Vec::new();
    let mut level = leaves.to_vec();
    let mut position = index;
    while level.len() > 1 {
        let sibling = position ^ 1;
        if sibling < level.len() {
            let side = if sibling < position { SiblingSide::Left } else { SiblingSide::Right };
            steps.push(ProofStep { sibling: hex::encode(level[sibling]), side });
        }
        level = level
            .chunks(2)
            .map(|pair| if let [left, right] = pair { node_hash(left, right) } else { pair[0] })
            .collect();
        position /= 2;
    }
    Some(steps)
}

/// Checks that `statement` is included under `root_hex` by `proof`.
pub fn verify_inclusion(statement: &Statement, proof: &[ProofStep], root_hex: &str) -> bool {
    let Ok(mut hash) = leaf_hash(statement) else {
        return false;
    };
    for step in proof {
        let mut sibling = [0u8; 32];
        if hex::decode_to_slice(&step.sibling, &mut sibling).is_err() {
            return false;
        }
        hash = match step.side {
            SiblingSide::Left => node_hash(&sibling, &hash),
            SiblingSide::Right => node_hash(&hash, &sibling),
        };
    }
    hex::encode(hash) == root_hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_statement;

    #[test]
    fn every_leaf_of_trees_of_many_sizes_proves_inclusion() {
        for size in 1..=9u8 {
            let statements: Vec<Statement> = (0..size).map(sample_statement).collect();
            let leaves: Vec<Hash> = statements.iter().map(|s| leaf_hash(s).expect("hashes")).collect();
            let root_hex = hex::encode(root(&leaves));
            for (index, statement) in statements.iter().enumerate() {
                let path = proof(&leaves, index).expect("in range");
                assert!(verify_inclusion(statement, &path, &root_hex), "size {size} index {index}");
            }
        }
    }

    #[test]
    fn a_changed_statement_does_not_prove_inclusion() {
        let statements: Vec<Statement> = (0..4).map(sample_statement).collect();
        let leaves: Vec<Hash> = statements.iter().map(|s| leaf_hash(s).expect("hashes")).collect();
        let root_hex = hex::encode(root(&leaves));
        let path = proof(&leaves, 2).expect("in range");
        let mut forged = statements[2].clone();
        forged.sales.0 += 1;
        assert!(!verify_inclusion(&forged, &path, &root_hex));
    }
}
