//! The built `fuddle-cli` binary's contract for bad usage and an unreachable
//! node. (Having an integration test here also makes `cargo test` build the
//! binary, which the system tests in `tests/` run.)

use std::process::Command;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fuddle-cli"))
        .args(args)
        .env_remove("FUDDLE_ADDR")
        .output()
        .expect("running fuddle-cli")
}

#[test]
fn help_succeeds() {
    let out = cli(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("members"));
}

#[test]
fn bad_usage_exits_2_with_a_message_on_stderr() {
    let out = cli(&["members", "register", "--id", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--service"));

    let out = cli(&["members", "update", "x", "--metadata", "novalue"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("novalue"));
}

#[test]
fn an_unreachable_node_exits_1_with_one_line() {
    let out = cli(&["--addr", "127.0.0.1:1", "members", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach 127.0.0.1:1"), "{stderr}");
}
