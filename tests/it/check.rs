use std::path::PathBuf;
use std::process::Output;

use assert_cmd::cargo::cargo_bin_cmd;

/// Writes `yaml` to a file in a fresh directory and runs `sessiongate COMMAND --config FILE`.
fn run_with(command: &str, yaml: &str) -> (Output, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = cargo_bin_cmd!("sessiongate")
        .args([command, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (out, path, dir)
}

#[test]
fn check_reports_every_problem_of_a_bad_file_with_line_numbers() {
    let (out, path, _dir) = run_with(
        "check",
        "listeners:
  - { name: web, bind: \"127.0.0.1:99999\" }
upstreams:
  app:
    servers: [ { url: \"http://127.0.0.1:8081\" } ]
    response_timeout: soon
routes:
  - { match: { path_prefix: / }, upstream: ap, strip_prefx: true }
",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    let file = path.display().to_string();
    assert!(lines[0].starts_with(&format!("{file}:2:")), "{stderr}");
    assert!(
        lines[0].contains("listeners[0].bind: bad address"),
        "{stderr}"
    );
    assert!(lines[1].starts_with(&format!("{file}:6:")), "{stderr}");
    assert!(
        lines[1].contains("upstreams.app.response_timeout: bad duration"),
        "{stderr}"
    );
    assert!(lines[2].starts_with(&format!("{file}:8:")), "{stderr}");
    assert!(lines[3].starts_with(&format!("{file}:8:")), "{stderr}");
    assert!(
        stderr.contains("routes[0].upstream: unknown upstream \"ap\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0].strip_prefx: unknown key (did you mean `strip_prefix`?)"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_shipped_gateway_yaml() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml");
    let out = cargo_bin_cmd!("sessiongate")
        .args(["check", "--config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_a_certificate_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let (out, _, _dir) = run_with(
        "check",
        &format!(
            "listeners:
  - name: tls
    bind: \"127.0.0.1:0\"
    tls:
      certificates:
        - {{ cert: \"{}\", key: \"{}\" }}
upstreams:
  app: {{ servers: [ {{ url: \"http://127.0.0.1:1\" }} ] }}
routes: [ {{ upstream: app, match: {{}} }} ]
",
            cert.display(),
            key.display()
        ),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(":6:11: listeners[0].tls.certificates[0]:"),
        "{stderr}"
    );
}

#[test]
fn run_with_a_bad_config_exits_nonzero_without_serving() {
    let (out, _, _dir) = run_with("run", "listeners: []\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("gw.yaml:1:"), "{stderr}");
}

#[test]
fn gen_cert_writes_a_certificate_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = cargo_bin_cmd!("sessiongate")
        .args(["gen-cert", "--out"])
        .arg(dir.path())
        .args(["--name", "shop.test", "--name", "10.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cert = std::fs::read_to_string(dir.path().join("shop.test.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let key = dir.path().join("shop.test.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A valid file's first seven lines: one listener, one upstream, one route.
const ONE_ROUTE: &str = "listeners:
  - { name: web, bind: \"127.0.0.1:0\" }
upstreams:
  app:
    servers: [ { url: \"http://127.0.0.1:8081\" } ]
routes:
  - { match: { path_prefix: / }, upstream: app }
";

#[test]
fn check_reads_the_session_secret_file_and_reports_a_short_secret() {
    let yaml = format!("{ONE_ROUTE}sessions:\n  secret_file: session.keys\n");
    let (out, path, _dir) = run_with("check", &yaml);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = path.display().to_string();
    assert!(stderr.starts_with(&format!("{file}:9:")), "{stderr}");
    assert!(
        stderr.contains("sessions.secret_file: cannot read"),
        "{stderr}"
    );

    // A secret that is too short is refused too; a good one passes.
    let dir = path.parent().unwrap();
    std::fs::write(dir.join("session.keys"), "short\n").unwrap();
    let out = cargo_bin_cmd!("sessiongate")
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("at least 32")
    );
    std::fs::write(
        dir.join("session.keys"),
        "# newest first\nnew-secret-0123456789abcdef0123456789\nold-secret-0123456789abcdef0123456789\n",
    )
    .unwrap();
    let out = cargo_bin_cmd!("sessiongate")
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn check_reports_an_unreadable_redis_ca_file_where_the_store_is_written() {
    let yaml = format!(
        "{ONE_ROUTE}sessions:\n  store:\n    kind: redis\n    redis: {{ url: \"rediss://127.0.0.1:6380\", ca: missing-ca.pem }}\n"
    );
    let (out, path, _dir) = run_with("check", &yaml);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = path.display().to_string();
    assert!(stderr.starts_with(&format!("{file}:10:")), "{stderr}");
    assert!(
        stderr.contains("sessions.store: cannot read the Redis CA file"),
        "{stderr}"
    );
}
