//! Access logs as the real binary writes them: JSON lines that parse, with the session's
//! status and a short hash of its token, never the token.

use std::time::Duration;

use crate::sessions::shop;
use crate::support::*;

/// The gateway binary with `logs` set as given, in front of `b`, logging to `file`.
async fn logged_gateway(b: &Backend, logs: &str, file: &std::path::Path) -> GatewayProcess {
    let yaml = simple_config(&[b.addr], "", &format!("sessions: {{}}\nlogs: {logs}\n"));
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || GatewayProcess::start_logged(&yaml, &file))
        .await
        .unwrap()
}

/// Sends `path` with `cookie`, returning the cookie the response sets (if any).
async fn get(gw: &GatewayProcess, path: &str, cookie: Option<&str>) -> Option<String> {
    let mut req = client().get(format!("http://{}{path}", gw.http));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("sg={c}"));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers().get("set-cookie").map(|v| {
        let v = v.to_str().unwrap();
        v.split(';')
            .next()
            .unwrap()
            .trim_start_matches("sg=")
            .to_owned()
    });
    resp.text().await.unwrap();
    set
}

/// The log's lines, once `want` access lines are in it (lines are written as bodies end).
async fn log_lines(file: &std::path::Path, want: usize) -> String {
    let mut text = String::new();
    let written = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(file).unwrap();
        let n = text.matches("access").count();
        async move { n >= want }
    })
    .await;
    assert!(written, "fewer than {want} access lines:\n{text}");
    text
}

#[tokio::test]
async fn json_access_lines_parse_and_carry_the_session_status_and_hash_never_the_token() {
    let b = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.log");
    let gw = logged_gateway(&b, "{ format: json }", &file).await;
    let token = get(&gw, "/login", None).await.unwrap();
    get(&gw, "/whoami", Some(&token)).await;
    let text = log_lines(&file, 2).await;

    assert!(!text.contains(&token), "the token is in the log:\n{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["target"] == "access").collect();
    let whoami = access
        .iter()
        .find(|l| l["path"] == "/whoami")
        .unwrap_or_else(|| panic!("no line for /whoami:\n{text}"));
    assert_eq!(whoami["level"], "INFO");
    assert_eq!(whoami["client"], "127.0.0.1");
    assert_eq!(whoami["method"], "GET");
    assert_eq!(whoami["route"], "app");
    assert_eq!(whoami["upstream"], "app");
    assert_eq!(whoami["status"], 200);
    assert_eq!(whoami["session_status"], "active");
    assert!(whoami["bytes"].as_u64().unwrap() > 0);
    assert!(whoami["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(whoami["upstream_ms"].as_f64().unwrap() > 0.0);
    let hash = whoami["session"].as_str().unwrap();
    assert!(hash.starts_with("tok:") && hash.len() < 20, "{hash}");
    // The login's line names the session it created by the same hash.
    let login = access.iter().find(|l| l["path"] == "/login").unwrap();
    assert_eq!(login["session_status"], "none");
    assert_eq!(login["session"], hash);
}

#[tokio::test]
async fn access_lines_can_be_turned_off_and_other_logs_stay() {
    let b = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.log");
    let gw = logged_gateway(&b, "{ access: false }", &file).await;
    get(&gw, "/", None).await;
    get(&gw, "/", None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("listening"), "{text}");
    assert!(!text.contains("access"), "{text}");
}

/// The gateway binary with access lines to `access.log` beside its configuration, in
/// `format`; its own logs to `stderr_file`.
async fn file_logged_gateway(
    b: &Backend,
    format: &str,
    stderr_file: &std::path::Path,
) -> GatewayProcess {
    logged_gateway(
        b,
        &format!("{{ access: {{ file: access.log, format: {format} }} }}"),
        stderr_file,
    )
    .await
}

/// The lines of `file` once at least `want` are in it (lines go out within a second).
async fn file_lines(file: &std::path::Path, want: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let written = eventually(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let n = lines.len();
        async move { n >= want }
    })
    .await;
    assert!(
        written,
        "fewer than {want} lines in {}: {lines:?}",
        file.display()
    );
    lines
}

#[tokio::test]
async fn an_access_log_file_in_combined_format_reads_as_nginxs_and_holds_no_token() {
    let b = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = file_logged_gateway(&b, "combined", &dir.path().join("stderr")).await;
    let token = get(&gw, "/login", None).await.unwrap();
    let resp = client()
        .get(format!("http://{}/cart?item=7", gw.http))
        .header("cookie", format!("sg={token}"))
        .header("referer", format!("http://{}/;sgsid={token}", gw.http))
        .header("user-agent", "tester \"one\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let lines = file_lines(&gw.dir().join("access.log"), 2).await;
    let cart = lines.iter().find(|l| l.contains("/cart")).unwrap();
    // $remote_addr - - [$time_local] "$request" $status $bytes "$http_referer" "$http_user_agent"
    let re_ok = cart.starts_with("127.0.0.1 - - [")
        && cart.contains("] \"GET /cart?item=7 HTTP/1.1\" 200 ")
        && cart.ends_with(&format!("\"http://{}/\" \"tester \\x22one\\x22\"", gw.http));
    assert!(re_ok, "{cart}");
    let all = lines.join("\n");
    assert!(
        !all.contains(&token),
        "the token is in the access log:\n{all}"
    );
    // The gateway's own lines stay on stderr; no access line goes there.
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(!stderr.contains("/cart"), "{stderr}");
}

#[tokio::test]
async fn after_logrotate_moves_the_file_sigusr1_makes_the_gateway_write_a_new_one() {
    let b = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = file_logged_gateway(&b, "json", &dir.path().join("stderr")).await;
    let log = gw.dir().join("access.log");
    get(&gw, "/whoami", None).await;
    file_lines(&log, 1).await;
    let rotated = gw.dir().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    // The reopen is asked for within the writer's tick; lines after it go to the new file.
    let reopened = eventually(Duration::from_secs(5), || {
        let log = log.clone();
        let gw_addr = gw.http;
        async move {
            let _ = client()
                .get(format!("http://{gw_addr}/whoami"))
                .send()
                .await
                .map(|r| r.status());
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/whoami"))
        }
    })
    .await;
    assert!(reopened, "no new access.log after SIGUSR1");
    let old = std::fs::read_to_string(&rotated).unwrap();
    let first: serde_json::Value = serde_json::from_str(old.lines().next().unwrap()).unwrap();
    assert_eq!(first["path"], "/whoami");
}

#[tokio::test]
async fn lines_waiting_in_the_access_log_are_written_before_the_gateway_exits() {
    let b = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = file_logged_gateway(&b, "text", &dir.path().join("stderr")).await;
    for _ in 0..3 {
        get(&gw, "/whoami", None).await;
    }
    // Stopped at once: the lines are still waiting for their second to pass.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "did not exit"
    );
    let text = std::fs::read_to_string(gw.dir().join("access.log")).unwrap();
    assert_eq!(text.matches("path=/whoami").count(), 3, "{text}");
}

/// A request the drain cuts is logged too (as 499, nginx's "client closed request"), and its
/// line reaches the file before the process ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_of_a_request_the_drain_cut_is_written_before_the_gateway_exits() {
    let stuck = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        text(200, "never")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = simple_config(
        &[stuck.addr],
        "    response_timeout: 60s",
        "timeouts: { drain: 300ms }\nlogs: { access: { file: access.log, format: combined } }\n",
    );
    let stderr = dir.path().join("stderr");
    let mut gw = tokio::task::spawn_blocking(move || GatewayProcess::start_logged(&yaml, &stderr))
        .await
        .unwrap();
    let url = format!("http://{}/stuck", gw.http);
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    assert!(
        eventually(Duration::from_secs(3), || async {
            stuck.requests().len() == 1
        })
        .await
    );
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "did not exit"
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "the drain did not cut it"
    );
    let text = std::fs::read_to_string(gw.dir().join("access.log")).unwrap_or_default();
    assert!(text.contains("\"GET /stuck HTTP/1.1\" 499 "), "{text}");
}
