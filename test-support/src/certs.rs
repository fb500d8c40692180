//! Test certificates: a CA and a server certificate for 127.0.0.1/localhost, made with the openssl
//! command line (no certificate is checked into the repository).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The files [`make`] writes.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA certificate (PEM) that signs the server's.
    pub ca: PathBuf,
    /// The server certificate (PEM) for `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
}

/// Makes a CA and a server certificate in `dir`. `None` when the openssl command is missing: the
/// caller then skips its test, except that with `GRIDEX_REQUIRE_TOOLS` set (as in CI) a missing
/// openssl fails the test. A failure of openssl itself always fails the test.
pub fn make(dir: &Path) -> Option<TestCertificates> {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("GRIDEX_REQUIRE_TOOLS").is_none(),
            "GRIDEX_REQUIRE_TOOLS is set but openssl is missing"
        );
        eprintln!("SKIPPED: the openssl command is not installed, so no test certificates can be made");
        return None;
    }
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        .expect("writes the certificate extensions");
    let new_key = |out: &str| run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", out]);
    let made = new_key("ca.key")
        && run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=gridex test CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ])
        && new_key("server.key")
        && run(&["req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr"])
        && run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
    assert!(made, "openssl makes the test certificates");
    Some(TestCertificates {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    })
}
