use std::time::{Duration, Instant};

use crate::support::*;

/// SIGTERM to the real binary while a request is in flight: the request completes, new
/// connections are refused, and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        text(200, "finished after the signal")
    })
    .await;
    let yaml = simple_config(&[slow.addr], "", "timeouts: { drain: 10s }");
    let mut gw = tokio::task::spawn_blocking(move || GatewayProcess::start(&yaml))
        .await
        .unwrap();
    let url = format!("http://{}/", gw.http);
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    assert!(
        eventually(Duration::from_secs(3), || async {
            slow.requests().len() == 1
        })
        .await
    );

    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::net::TcpStream::connect(gw.http).await;
    assert!(
        refused.is_err(),
        "a draining gateway accepted a new connection"
    );

    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was cut");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "finished after the signal");
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the gateway did not exit after draining");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn drain_timeout_cuts_requests_that_take_too_long() {
    let stuck = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        text(200, "never")
    })
    .await;
    let mut gw = Gateway::start(&simple_config(
        &[stuck.addr],
        "    response_timeout: 60s",
        "timeouts: { drain: 300ms }",
    ))
    .await;
    let url = gw.url("web", "/");
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    assert!(
        eventually(Duration::from_secs(3), || async {
            stuck.requests().len() == 1
        })
        .await
    );
    let start = Instant::now();
    let drained = gw.shutdown().await;
    assert!(!drained);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        in_flight.await.unwrap().is_err(),
        "the stuck request should have been cut"
    );
}

#[tokio::test]
async fn readyz_says_draining_while_requests_finish() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        text(200, "done")
    })
    .await;
    let yaml = format!(
        "{}admin: {{ bind: \"127.0.0.1:0\" }}\n",
        simple_config(&[slow.addr], "", "timeouts: { drain: 10s }")
    );
    let mut gw = Gateway::start(&yaml).await;
    let admin = gw.admin();
    let readyz = format!("http://{admin}/readyz");
    assert_eq!(client().get(&readyz).send().await.unwrap().status(), 200);
    let url = gw.url("web", "/");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    assert!(
        eventually(Duration::from_secs(3), || async {
            slow.requests().len() == 1
        })
        .await
    );
    let shutdown = tokio::spawn(async move { gw.shutdown().await });
    let draining = eventually(Duration::from_secs(1), || {
        let readyz = readyz.clone();
        async move {
            match client().get(&readyz).send().await {
                Ok(r) => r.status() == 503 && r.text().await.unwrap() == "draining\n",
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(draining, "/readyz never said draining");
    assert_eq!(in_flight.await.unwrap(), 200);
    assert!(shutdown.await.unwrap());
}

/// What wrk reported: requests done, and its error counts.
#[derive(Debug, Default)]
struct WrkReport {
    requests: u64,
    read: u64,
    timeout: u64,
    non_2xx: u64,
}

fn wrk_report(out: &str) -> WrkReport {
    let mut r = WrkReport::default();
    for line in out.lines().map(str::trim) {
        if let Some(n) = line
            .split(" requests in")
            .next()
            .filter(|_| line.contains(" requests in"))
        {
            r.requests = n.trim().parse().unwrap();
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut kv = part.split_whitespace();
                let (k, v) = (kv.next().unwrap(), kv.next().unwrap().parse().unwrap());
                match k {
                    "read" => r.read = v,
                    "timeout" => r.timeout = v,
                    _ => {}
                }
            }
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = n.trim().parse().unwrap();
        }
    }
    r
}

/// SIGTERM while wrk keeps 20 connections busy: no request is reset or failed, every request
/// that reached the backend got its response to wrk, and the gateway exits cleanly within the
/// drain timeout. (wrk reconnects after each `Connection: close`, and counts the connections
/// refused once the listener has closed as write errors: those are no request's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_resets_no_request() {
    let backend = Backend::start(|_req| async move {
        // Long enough that requests are in flight whenever the signal comes.
        tokio::time::sleep(Duration::from_millis(5)).await;
        text(200, "ok")
    })
    .await;
    let yaml = simple_config(&[backend.addr], "", "timeouts: { drain: 5s }");
    let mut gw = tokio::task::spawn_blocking(move || GatewayProcess::start(&yaml))
        .await
        .unwrap();
    let url = format!("http://{}/", gw.http);
    let wrk = tokio::task::spawn_blocking(move || {
        std::process::Command::new("wrk")
            .args(["-t1", "-c20", "-d3s", "--timeout", "2s", &url])
            .output()
            .expect("wrk (scripts/test installs it)")
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let served_before = backend.requests().len();
    assert!(
        served_before > 50,
        "wrk barely started: {served_before} requests"
    );
    gw.signal("TERM");
    let out = wrk.await.unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = wrk_report(&out);
    assert!(report.requests > 0, "{out}");
    assert_eq!(
        (report.read, report.timeout, report.non_2xx),
        (0, 0, 0),
        "requests were reset or failed during the drain:\n{out}"
    );
    assert_eq!(
        backend.requests().len() as u64,
        report.requests,
        "a request reached the backend but its response never reached wrk:\n{out}"
    );
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(8)))
        .await
        .unwrap()
        .expect("the gateway did not exit within the drain timeout");
    assert!(
        status.success(),
        "{status:?}: something was cut at the drain timeout"
    );
}
