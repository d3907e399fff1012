use crate::support::*;

#[tokio::test]
async fn requests_are_routed_by_host_and_longest_path_prefix() {
    let main = Backend::named("main").await;
    let api = Backend::named("api").await;
    let assets = Backend::named("assets").await;
    let yaml = format!(
        "listeners: [ {{ name: web, bind: \"127.0.0.1:0\" }} ]
upstreams:
  main: {{ servers: [ {{ url: \"{}\" }} ] }}
  api: {{ servers: [ {{ url: \"{}\" }} ] }}
  assets: {{ servers: [ {{ url: \"{}\" }} ] }}
routes:
  - {{ name: main, match: {{ host: \"*\" }}, upstream: main }}
  - {{ name: api, match: {{ host: \"*.example.com\" }}, upstream: api }}
  - {{ name: assets, match: {{ host: \"*\", path_prefix: /static }}, upstream: assets, strip_prefix: true }}
",
        main.url(),
        api.url(),
        assets.url()
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    let get = |host: &'static str, path: &'static str| {
        let c = c.clone();
        let url = gw.url("web", path);
        async move {
            c.get(url)
                .header("host", host)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(get("shop.test", "/").await, "main");
    assert_eq!(get("v1.example.com", "/users").await, "api");
    assert_eq!(get("shop.test", "/static/app.css").await, "assets");
    assert_eq!(
        assets.last().uri,
        "/app.css",
        "strip_prefix removes /static"
    );
    assert_eq!(
        get("shop.test", "/staticfiles").await,
        "main",
        "prefixes match whole segments"
    );
    // A longer host match beats a longer path prefix: the host picks first.
    assert_eq!(get("v1.example.com", "/static/x").await, "api");
    assert_eq!(
        get("shop.test", "/static/../admin").await,
        "main",
        "dot segments are resolved before routing"
    );
}

#[tokio::test]
async fn request_no_route_matches_gets_404_and_no_backend_is_contacted() {
    let shop = Backend::named("shop").await;
    let yaml = format!(
        "listeners: [ {{ name: web, bind: \"127.0.0.1:0\" }} ]
upstreams:
  shop: {{ servers: [ {{ url: \"{}\" }} ] }}
routes:
  - {{ name: shop, match: {{ host: shop.test }}, upstream: shop }}
",
        shop.url()
    );
    let gw = Gateway::start(&yaml).await;
    let resp = client()
        .get(gw.url("web", "/"))
        .header("host", "other.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let body = resp.text().await.unwrap();
    assert!(body.contains("no route matches"), "{body}");
    assert!(shop.requests().is_empty());
}

#[tokio::test]
async fn host_header_is_preserved_upstream() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    client()
        .get(gw.url("web", "/x?q=1"))
        .header("host", "Shop.Example:8080")
        .send()
        .await
        .unwrap();
    let seen = b.last();
    assert_eq!(seen.headers["host"], "Shop.Example:8080");
    assert_eq!(seen.uri, "/x?q=1");
}
