//! Prints the protocol test vectors: `cargo run -p protocol --example gen_vectors > protocol/test-vectors.json`.
fn main() {
    print!("{}", protocol::vectors::vectors_file());
}
