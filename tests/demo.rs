//! `serve --dev` serves the demo page and the browser client at `/demo` on the WebSocket
//! listener (issue 13 item 2); without `--dev` those paths are 404 like any other.

mod common;

use common::*;
use std::time::Duration;

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
    let c = Client::connect(srv.ws, &page_token(srv.ws)).expect("the page's token connects");
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
fn the_page_token_carries_what_the_server_requires() {
    let mut flags = vec!["--dev"];
    flags.extend(STRICT_JWT_FLAGS);
    let srv = TestServer::start(&flags);
    let c = Client::connect(srv.ws, &page_token(srv.ws)).expect("the page's token connects");
    assert_eq!(c.welcome["user"], "alice");
}

#[test]
fn without_dev_the_demo_is_not_there() {
    let srv = TestServer::start(&[]);
    get(&srv, "/demo").assert_refusal(404, "not_found");
    get(&srv, "/demo/throng.js").assert_refusal(404, "not_found");
}

#[test]
fn a_client_slow_to_read_the_library_holds_up_no_one_and_gets_all_of_it() {
    use std::io::Write;
    let srv = TestServer::start(&["--dev"]);
    // A tiny receive buffer, and nothing read: the library (about 28 KB) cannot all go
    // out at once.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(1024).expect("SO_RCVBUF");
    sock.connect_timeout(&srv.ws.into(), IO_TIMEOUT)
        .expect("connect");
    let mut slow: std::net::TcpStream = sock.into();
    slow.write_all(b"GET /demo/throng.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write the request");
    // Meanwhile the acceptor serves others: an upgrade, and the page.
    let c = Client::connect(srv.ws, &token("bob")).expect("served while the library waits");
    assert_eq!(c.welcome["user"], "bob");
    assert_eq!(get(&srv, "/demo").status, 200);
    // And the slow reader still gets the whole library, however long it took.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let (js, _) = read_response(&mut slow, Vec::new()).expect("the whole response");
    assert_eq!(js.status, 200);
    assert!(js.text().trim_end().ends_with('}') && js.text().contains("export class ThrongClient"));
    let mut rest = Vec::new();
    use std::io::Read;
    assert_eq!(slow.read_to_end(&mut rest).expect("then the close"), 0);
}

/// The token the demo page at `ws` carries.
fn page_token(ws: std::net::SocketAddr) -> String {
    let page = raw_http(ws, b"GET /demo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(page.status, 200, "{}", page.text());
    page.text()
        .split("const TOKEN = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a token in the page")
        .to_string()
}

#[test]
fn the_page_signs_with_the_secret_file_as_it_is_now() {
    use common::tls::ServeProc;
    let dir = std::env::temp_dir().join(format!("throng-demo-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secrets");
    std::fs::write(&file, format!("{}\n", "a".repeat(32))).unwrap();
    let path = file.to_str().unwrap();
    let mut p = ServeProc::spawn_without_secret(&["--dev", "--jwt-secret-file", path]);
    let (ws, _) = p.listening();
    assert!(Client::connect(ws, &page_token(ws)).is_ok());
    // The secret rotates, the old one retired: the page's next token is signed with
    // the new one.
    std::fs::write(&file, format!("{}\n", "b".repeat(32))).unwrap();
    p.signal(libc::SIGHUP);
    p.find(Duration::from_secs(10), |l| {
        l.contains("JWT keys reloaded").then_some(())
    });
    let token = page_token(ws);
    assert!(
        Client::connect(ws, &token).is_ok(),
        "the page's token after the rotation"
    );
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}");
    let _ = std::fs::remove_dir_all(dir);
}
