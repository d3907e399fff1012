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
