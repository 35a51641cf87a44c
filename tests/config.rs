//! `fulcrum -t`: every invalid example exits 78 and names each problem's line; every file in
//! conf/ passes; usage errors exit 2; validation binds no port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn check(path: &Path) -> Output {
    Command::new(BIN)
        .arg("-c")
        .arg(path)
        .arg("-t")
        .output()
        .expect("run fulcrum -t")
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_in_conf_is_valid() {
    let files = yaml_files("conf");
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let out = check(&f);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_invalid_example_exits_78_naming_each_line() {
    let files = yaml_files("tests/invalid");
    assert!(files.len() >= 5);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` lines",
            f.display()
        );
        let out = check(&f);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{}:\n{stderr}", f.display());
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&*f.to_string_lossy()))
            .collect();
        for want in &expected {
            let prefix = format!("{}:{want}:", f.display());
            assert!(
                problems.iter().any(|l| l.starts_with(&prefix)),
                "{}: expected a line starting with `{prefix}` in:\n{stderr}",
                f.display()
            );
        }
        assert_eq!(
            problems.len(),
            expected.len(),
            "{}: every problem, and only those:\n{stderr}",
            f.display()
        );
    }
}

#[test]
fn a_missing_file_is_a_configuration_error() {
    let out = check(Path::new("/nonexistent/fulcrum.yaml"));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn unknown_flags_exit_2() {
    let out = Command::new(BIN).arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A configuration whose one listener (`name`) is on a port this test holds; `more_pools` are
/// appended to its pools. Returns (the held socket, the dir, the config path).
fn config_on_a_held_port(
    name: &str,
    more_pools: &str,
) -> (std::net::TcpListener, tempfile::TempDir, std::path::PathBuf) {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("f.yaml");
    std::fs::write(
        &conf,
        format!(
            "server: {{pid_file: {0}/p.pid, upgrade_sock: {0}/u.sock, grace_period_seconds: 0}}\nlisteners: [{{name: {name}, listen: 127.0.0.1:{port}}}]\nroutes: [{{pool: a}}]\npools:\n  a: {{backends: [{{address: 127.0.0.1:9}}]}}\n{more_pools}",
            dir.path().display()
        ),
    )
    .unwrap();
    (held, dir, conf)
}

#[test]
fn test_mode_binds_no_port_and_prints_warnings() {
    // Hold the listener's port: -t must still succeed, because it binds nothing.
    let (_held, _dir, conf) =
        config_on_a_held_port("main", "  unused: {backends: [{address: 127.0.0.1:10}]}\n");
    let out = check(&conf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("pools.unused: no route uses this pool"),
        "{stderr}"
    );
}

#[test]
fn a_busy_port_is_a_prompt_runtime_failure_naming_the_listener() {
    let (_held, _dir, conf) = config_on_a_held_port("front", "");
    let started = std::time::Instant::now();
    let out = Command::new(BIN).arg("-c").arg(&conf).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listener front: cannot listen on"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
