//! The command line's contract with scripts: usage errors exit 2 with a useful message,
//! `--help` lists every subcommand.

use swarmlm_e2e::swarmlm;

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = swarmlm(home.path()).arg("frobnicate").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for an unknown subcommand"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("frobnicate"),
        "names the bad subcommand: {err}"
    );
}

#[test]
fn bad_flag_value_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = swarmlm(home.path())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcsh") && err.contains("bash"),
        "says what was expected: {err}"
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = swarmlm(home.path())
        .args(["completions", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn completions_are_generated_for_bash() {
    let home = tempfile::tempdir().unwrap();
    let out = swarmlm(home.path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_swarmlm()") && script.contains("completions"),
        "{script}"
    );
}

#[test]
fn help_lists_subcommands_and_exits_zero() {
    let home = tempfile::tempdir().unwrap();
    let out = swarmlm(home.path()).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("completions"), "{text}");
}
