//! The independent implementation (`tools/verify_vectors.py`, Python + libsodium) agrees with every
//! vector. Skipped when Python or PyNaCl is missing, unless `GRIDEX_REQUIRE_TOOLS` is set (CI).

use std::path::Path;
use std::process::Command;

fn pynacl_available() -> bool {
    Command::new("python3").args(["-c", "import nacl.bindings"]).output().is_ok_and(|output| output.status.success())
}

#[test]
fn libsodium_agrees_with_every_vector() {
    if !pynacl_available() {
        assert!(
            std::env::var_os("GRIDEX_REQUIRE_TOOLS").is_none(),
            "GRIDEX_REQUIRE_TOOLS is set but python3 with PyNaCl is missing"
        );
        eprintln!("skipped: python3 with PyNaCl is missing (pip install pynacl)");
        return;
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(crate_dir.join("tools/verify_vectors.py"))
        .arg(crate_dir.join("test-vectors.json"))
        .output()
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "verify_vectors.py disagrees:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains(" 0 failures"), "{report}");
}
