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
    let admin = gw.running.as_ref().unwrap().admin_addr().unwrap();
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
