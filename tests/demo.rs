//! `serve --dev` serves the demo page and the browser client at `/demo` on the WebSocket
//! listener (issue 13 item 2); without `--dev` those paths are 404 like any other.

mod common;

use common::*;

fn get(srv: &TestServer, path: &str) -> Resp {
    raw_http(
        srv.ws,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

#[test]
fn dev_mode_serves_the_page_and_the_library() {
    let srv = TestServer::start(&["--dev"]);
    let page = get(&srv, "/demo");
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(
        html.contains("import { ThrongClient } from \"/demo/throng.js\""),
        "{html}"
    );
    // The page's token is valid for this server: it connects as alice.
    let token = html
        .split("const TOKEN = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a token in the page");
    let c = Client::connect(srv.ws, token).expect("the page's token connects");
    assert_eq!(c.welcome["user"], "alice");

    let js = get(&srv, "/demo/throng.js");
    assert_eq!(js.status, 200);
    assert!(js
        .header("Content-Type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text().contains("export class ThrongClient"));
    assert_eq!(get(&srv, "/demo/nothing").status, 404);
}

#[test]
fn without_dev_the_demo_is_not_there() {
    let srv = TestServer::start(&[]);
    get(&srv, "/demo").assert_refusal(404, "not_found");
    get(&srv, "/demo/throng.js").assert_refusal(404, "not_found");
}
