//! The `swarmlm` binary itself, run through the path cargo gives its own package's tests.
//!
//! Besides checking the version line, this test is why `cargo test --workspace` builds
//! `target/<profile>/swarmlm` at all: cargo builds a package's binaries only for that package's
//! own integration tests. The end-to-end tests in the top-level `tests/` package drive that same
//! binary, so without this file a clean clone's test run would find no binary to drive.

use std::process::Command;

#[test]
fn version_names_the_package_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmlm"))
        .arg("--version")
        .output()
        .expect("run swarmlm --version");
    assert!(out.status.success(), "exit status {:?}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("utf-8 version line");
    assert_eq!(
        stdout.trim(),
        format!("swarmlm {}", env!("CARGO_PKG_VERSION"))
    );
}
