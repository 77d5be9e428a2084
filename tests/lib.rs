//! Shared helpers for the end-to-end tests that drive the built `swarmlm` binary.
//!
//! These tests run the real binary as a user would. `cargo test --workspace` builds it because
//! the `swarmlm-cli` package has an integration test of its own (`crates/swarmlm-cli/tests/`;
//! cargo builds a package's binaries only for those), so the binary sits next to the test
//! executables in the target directory; [`swarmlm_bin`] finds it there.

use std::path::PathBuf;
use std::process::Command;

/// Path of the `swarmlm` binary built by this same cargo invocation.
///
/// Panics with instructions when it is missing: that is a setup problem of the test run,
/// not a result to assert on.
pub fn swarmlm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARMLM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe> → target/<profile>/swarmlm
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("swarmlm");
    assert!(
        bin.is_file(),
        "the swarmlm binary is not at {}: run the tests with `cargo test --workspace` \
         (which builds it), or build it first with `cargo build -p swarmlm-cli`, \
         or point SWARMLM_BIN at it",
        bin.display()
    );
    bin
}

/// A `Command` for the `swarmlm` binary with a private `SWARMLM_HOME`, so a test never reads
/// or writes the user's model store.
pub fn swarmlm(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(swarmlm_bin());
    cmd.env("SWARMLM_HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env("NO_COLOR", "1");
    cmd
}

/// The repository's root folder (for the bundled assets).
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// Runs `cmd` with stdin closed and returns (exit code, stdout, stderr); -1 if killed by a signal.
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run swarmlm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` with stdin closed, fails the test with its stderr unless it exited 0, and
/// returns its output.
pub fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run swarmlm");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes a model folder `root/name` as `swarmlm fetch` leaves one: `files` in place, `partial`
/// files in the partial area, and `.swarmlm/manifest.toml` pinning the size and SHA-256 of both
/// (format hf-safetensors, the given magnet).
pub fn write_store_model(
    root: &std::path::Path,
    name: &str,
    magnet: &str,
    files: &[(&str, &[u8])],
    partial: &[(&str, &[u8])],
) -> PathBuf {
    use sha2::Digest as _;
    let dir = root.join(name);
    let state = dir.join(".swarmlm");
    std::fs::create_dir_all(state.join("partial")).unwrap();
    let total: usize = files.iter().chain(partial).map(|(_, b)| b.len()).sum();
    let mut toml = format!(
        "name = \"{name}\"\nformat = \"hf-safetensors\"\nmagnet = \"{magnet}&dn={name}\"\n\
         total_size = {total}\n"
    );
    for (path, bytes) in files.iter().chain(partial) {
        toml += &format!(
            "\n[[files]]\npath = \"{path}\"\nsize = {}\nsha256 = \"{}\"\n",
            bytes.len(),
            hex::encode(sha2::Sha256::digest(bytes))
        );
    }
    for (path, bytes) in files {
        std::fs::write(dir.join(path), bytes).unwrap();
    }
    for (path, bytes) in partial {
        std::fs::write(state.join("partial").join(path), bytes).unwrap();
    }
    std::fs::write(state.join("manifest.toml"), toml).unwrap();
    dir
}
