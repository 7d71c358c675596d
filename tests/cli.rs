//! The `throng` binary: serve + SIGTERM, `token`, invalid config, `--dev`; and
//! `Config::from_args`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use throng::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_throng");

/// Kills the child on drop so a failing test leaves no process behind.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<(&'static str, String)>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn throng");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(("stdout", l));
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(("stderr", l));
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Reads output lines until `f` returns Some, within `timeout`.
    fn find<T>(&mut self, timeout: Duration, mut f: impl FnMut(&str, &str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((stream, line)) => {
                    self.seen.push(format!("{stream}: {line}"));
                    if let Some(v) = f(stream, &line) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "not found within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the `listening` JSON log line; returns (client_addr, api_addr).
    fn listening(&mut self) -> (SocketAddr, SocketAddr) {
        self.find(Duration::from_secs(10), |_, line| listening_addrs(line))
    }

    /// Waits for the process to exit within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All output collected so far plus whatever arrives within `d`.
    fn drain(&mut self, d: Duration) -> String {
        let deadline = Instant::now() + d;
        while let Ok((stream, line)) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(format!("{stream}: {line}"));
        }
        self.seen.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

fn serve_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--shards",
        "2",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn sigterm_drains_with_1001_and_exits_0() {
    let mut p = Proc::spawn(&serve_args(&[
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--shutdown-grace-ms",
        "500",
        "--drain-ms",
        "200",
    ]));
    let (ws, api) = p.listening();
    let mut a = Client::connect(ws, &token("a")).expect("connect to the binary");
    let mut b = Client::connect(ws, &token("b")).expect("connect to the binary");
    let mut conn = HttpConn::connect(api);
    let r = conn.request(
        "POST",
        "/v1/push?wait=1",
        Some(API_KEY),
        Some(r#"{"broadcast":true,"data":"hi"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["delivered"], 2);
    assert_eq!(a.recv()["data"], "hi");
    assert_eq!(b.recv()["data"], "hi");

    let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert_eq!(a.expect_close(), Closed::Code(Some(1001)));
    assert_eq!(b.expect_close(), Closed::Code(Some(1001)));
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(
        st.success(),
        "exit status {st:?}; output:\n{}",
        p.drain(Duration::ZERO)
    );
}

#[test]
fn token_subcommand_output_is_accepted() {
    let out = throng_token(
        "cli-user",
        &["--ttl-secs", "600", "--topics", "room:1,feed:*"],
    );
    assert!(out.status.success(), "{out:?}");
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(tok.split('.').count(), 3, "not a JWT: {tok:?}");
    assert!(!tok.contains(char::is_whitespace));

    let srv = TestServer::start(&[]);
    let mut c = Client::connect(srv.ws, &tok).expect("minted token accepted");
    assert_eq!(c.welcome["user"], "cli-user");
    c.send(json!({"type": "subscribe", "topic": "feed:x", "ref": 1}));
    assert_eq!(c.recv()["type"], "subscribed");
    c.send(json!({"type": "subscribe", "topic": "room:2", "ref": 2}));
    assert_eq!(c.recv()["code"], "forbidden_topic");

    // A token with another secret is refused.
    let out = Command::new(BIN)
        .args(["token", "--secret", "other", "--sub", "x"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bad = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let err = Client::connect(srv.ws, &bad)
        .err()
        .expect("wrong secret refused");
    assert!(err.contains("401"), "{err}");
}

/// Runs `throng token` with the test secret for `sub`, and `extra` flags.
fn throng_token(sub: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["token", "--secret", SECRET, "--sub", sub];
    args.extend_from_slice(extra);
    Command::new(BIN)
        .args(&args)
        .output()
        .expect("run throng token")
}

#[test]
fn token_subcommand_signs_for_a_server_that_requires_issuer_audience_and_hs384() {
    let mint = |extra: &[&str]| {
        let out = throng_token("iss-user", extra);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let srv = TestServer::start(&[
        "--jwt-issuer",
        "https://auth.example",
        "--jwt-audience",
        "throng",
        "--jwt-algorithm",
        "HS384",
    ]);
    let good = mint(&[
        "--issuer",
        "https://auth.example",
        "--audience",
        "throng",
        "--algorithm",
        "HS384",
    ]);
    let c = Client::connect(srv.ws, &good).expect("token with the claims accepted");
    assert_eq!(c.welcome["user"], "iss-user");
    // Without them, or under another algorithm, the same server refuses it.
    for bad in [
        mint(&["--algorithm", "HS384"]),
        mint(&["--issuer", "https://auth.example", "--audience", "throng"]),
    ] {
        let err = Client::connect(srv.ws, &bad).err().expect("refused");
        assert!(err.contains("401"), "{err}");
    }
    // An algorithm it cannot sign with is a usage error that names it.
    let out = throng_token("x", &["--algorithm", "RS256"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RS256") && err.contains("HS512"), "{err}");
}

#[test]
fn token_ttl_expires() {
    let out = Command::new(BIN)
        .args(["token", "--secret", SECRET, "--sub", "x", "--ttl-secs", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Decode the payload without verifying: exp is about now + 1.
    use jsonwebtoken::{decode, DecodingKey, Validation};
    let mut v = Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_exp = false;
    let data = decode::<Value>(
        &tok,
        &DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &v,
    )
    .expect("signed with the given secret");
    let exp = data.claims["exp"].as_u64().expect("exp claim");
    let now = now_secs();
    assert!(exp >= now && exp <= now + 2, "exp {exp} now {now}");
    assert_eq!(data.claims["sub"], "x");
}

fn run_serve_expect_failure(args: &[&str], key_names: &[&str]) {
    let mut p = Proc::spawn(args);
    let st = p.wait_exit(Duration::from_secs(10));
    let out = p.drain(Duration::from_millis(200));
    assert!(!st.success(), "invalid config must fail; output:\n{out}");
    assert!(
        key_names.iter().any(|k| out.contains(k)),
        "error must name {key_names:?}; output:\n{out}"
    );
}

#[test]
fn invalid_flag_value_names_the_key() {
    run_serve_expect_failure(
        &serve_args(&["--jwt-secret", SECRET, "--ping-interval-ms", "0"]),
        &["ping_interval_ms", "ping-interval-ms"],
    );
    run_serve_expect_failure(
        &serve_args(&["--jwt-secret", SECRET, "--jwt-algorithm", "HS999"]),
        &["jwt_algorithm", "jwt-algorithm"],
    );
    // A key no request can send (header values are trimmed) would never match.
    run_serve_expect_failure(
        &serve_args(&["--jwt-secret", SECRET, "--api-key", "k "]),
        &["api_key (--api-key): has whitespace"],
    );
}

#[test]
fn missing_secret_names_the_key() {
    run_serve_expect_failure(&serve_args(&[]), &["jwt_secret", "jwt-secret"]);
}

#[test]
fn unknown_key_in_config_file() {
    let dir = std::env::temp_dir().join(format!("throng-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "ping_interval_ms = 1000\nbogus_setting = 5\n").unwrap();
    let p = path.to_str().unwrap();
    run_serve_expect_failure(
        &serve_args(&["--jwt-secret", SECRET, "--config", p]),
        &["bogus_setting"],
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn config_file_values_apply() {
    let dir = std::env::temp_dir().join(format!("throng-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("good.toml");
    std::fs::write(
        &path,
        "ping_interval_ms = 1234\nidle_timeout_ms = 5678\n[jwt]\nsecret = \"test-secret-0123456789abcdef0123456\"\n",
    )
    .unwrap();
    let cfg = Config::from_args([
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--idle-timeout-ms",
        "9999",
    ])
    .expect("valid config");
    assert_eq!(cfg.ping_interval, Duration::from_millis(1234));
    assert_eq!(
        cfg.idle_timeout,
        Duration::from_millis(9999),
        "flags override the file"
    );
    let srv = throng::server::Server::start(cfg).expect("start");
    let c = Client::connect(srv.client_addr(), &token("f")).expect("file secret used");
    assert_eq!(c.welcome["ping_interval_ms"], 1234);
    srv.shutdown();
    drop(c);
    srv.wait();
    std::fs::remove_file(&path).ok();
}

/// Ephemeral listeners and the test secret: a configuration `from_args` takes.
const BASE: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--api-listen",
    "127.0.0.1:0",
    "--jwt-secret",
    SECRET,
];

#[test]
fn from_args_errors_name_the_key() {
    let base = BASE;
    let cases: &[(&[&str], &str)] = &[
        (&["--ping-interval-ms", "0"], "ping_interval_ms"),
        (&["--idle-timeout-ms", "0"], "idle_timeout_ms"),
        (&["--max-message-size", "0"], "max_message_size"),
        (&["--shards", "0"], "shards"),
        (
            &["--api-max-buffered-bytes", "1000000"],
            "api_max_buffered_bytes",
        ),
        (
            &[
                "--redis",
                "redis://127.0.0.1:1",
                "--stream-trim",
                "false",
                "--stream-keep-ms",
                "5",
            ],
            "stream_keep_ms",
        ),
        (&["--redis", "rediss://localhost/#insecure"], "redis"),
        (
            &["--redis", "redis://localhost", "--redis-ca", "Cargo.toml"],
            "redis_ca",
        ),
        (
            &[
                "--redis",
                "rediss://localhost",
                "--redis-ca",
                "/no/such/ca.pem",
            ],
            "redis_ca",
        ),
        (
            &["--redis", "rediss://localhost", "--redis-ca", "Cargo.toml"],
            "redis_ca",
        ),
    ];
    for (extra, key) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        let err = Config::from_args(args.clone())
            .err()
            .unwrap_or_else(|| panic!("{args:?} must be refused"));
        assert!(err.to_string().contains(key), "{args:?}: {err}");
    }
}

#[test]
fn config_file_type_errors_give_the_line_and_the_key() {
    let dir = std::env::temp_dir().join(format!("throng-cfgerr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    for (body, want) in [
        (
            "shards = 2\nping_interval_ms = \"fast\"\n",
            "bad.toml:2:20: ping_interval_ms: invalid type: string \"fast\", expected u64",
        ),
        (
            "public_topics = \"news\"\n",
            "bad.toml:1:17: public_topics: invalid type: string \"news\", expected a sequence",
        ),
        (
            "[jwt] # keys\n# leeway\nleeway_secs = -1\n",
            "bad.toml:3:15: [jwt] leeway_secs: ",
        ),
    ] {
        std::fs::write(&path, body).unwrap();
        let file = path.to_str().unwrap();
        let args: Vec<&str> = BASE.iter().copied().chain(["--config", file]).collect();
        let err = Config::from_args(args).expect_err("refused").to_string();
        assert!(err.contains(want), "{body:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn errors_name_the_real_source_and_problem() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_remove("THRONG_JWT_SECRET")
            .env_remove("THRONG_API_KEY");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    // An env-file line `THRONG_API_KEY=`: no flag was given, so the error says where the
    // empty value came from.
    let mut serve = serve_args(&["--jwt-secret", SECRET]);
    let (code, err) = run(&serve, &[("THRONG_API_KEY", "")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("api_key (--api-key): is empty (the value of THRONG_API_KEY)"),
        "{err}"
    );
    // Both listeners on one address is this configuration's own conflict.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let addr = format!("127.0.0.1:{port}");
    serve = vec![
        "serve",
        "--listen",
        &addr,
        "--api-listen",
        &addr,
        "--jwt-secret",
        SECRET,
    ];
    let (code, err) = run(&serve, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("api_listen (--api-listen): "), "{err}");
    assert!(err.contains("is the same address as listen"), "{err}");
    let wild = format!("0.0.0.0:{port}");
    serve = vec![
        "serve",
        "--listen",
        &wild,
        "--api-listen",
        &addr,
        "--jwt-secret",
        SECRET,
    ];
    assert_eq!(run(&serve, &[]).0, Some(2));
    // `*` is allowed in a pattern, only not before its end.
    let token = [
        "token", "--secret", SECRET, "--sub", "a", "--topics", "a:*:b",
    ];
    let (code, err) = run(&token, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'*' only at its end"), "{err}");
    let public = serve_args(&["--jwt-secret", SECRET, "--public-topics", "x*y"]);
    let (code, err) = run(&public, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'*' only at its end"), "{err}");
}

#[test]
fn redis_client_certificate_errors_name_the_key() {
    let dir = std::env::temp_dir().join(format!("throng-cli-redis-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (one, two) = (
        common::tls::CertPair::generate(),
        common::tls::CertPair::generate(),
    );
    let (cert, key, other_key) = (dir.join("c.pem"), dir.join("k.pem"), dir.join("o.pem"));
    std::fs::write(&cert, &one.cert_pem).unwrap();
    std::fs::write(&key, &one.key_pem).unwrap();
    std::fs::write(&other_key, &two.key_pem).unwrap();
    let (cert, key, other_key) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
    );
    let run = |extra: &[&str]| {
        let mut args = BASE.to_vec();
        args.extend_from_slice(extra);
        Config::from_args(args).map_err(|e| e.to_string())
    };
    let tls = "rediss://localhost";
    let c = run(&[
        "--redis",
        tls,
        "--redis-client-cert",
        cert,
        "--redis-client-key",
        key,
    ])
    .expect("a matching pair");
    let identity = c.cluster.and_then(|c| c.redis_identity).expect("read");
    assert_eq!(identity.identity.chain.len(), 1);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--redis", tls, "--redis-client-cert", cert],
            "(--redis-client-key): is required with redis_client_cert",
        ),
        (
            &["--redis", tls, "--redis-client-key", key],
            "(--redis-client-cert): is required with redis_client_key",
        ),
        (
            &[
                "--redis",
                "redis://localhost",
                "--redis-client-cert",
                cert,
                "--redis-client-key",
                key,
            ],
            "is for a rediss:// (TLS) redis URL",
        ),
        (
            &[
                "--redis",
                tls,
                "--redis-client-cert",
                cert,
                "--redis-client-key",
                other_key,
            ],
            "does not belong to the key",
        ),
        (
            &[
                "--redis",
                tls,
                "--redis-client-cert",
                cert,
                "--redis-client-key",
                "/no/such/key.pem",
            ],
            "/no/such/key.pem: cannot read the key",
        ),
        (
            &[
                "--redis",
                tls,
                "--redis-client-cert",
                key,
                "--redis-client-key",
                key,
            ],
            "holds no PEM certificate",
        ),
    ];
    for (extra, says) in cases {
        let e = run(extra).expect_err("refused");
        assert!(e.contains(says), "{extra:?}: {e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn find_jwt(line: &str) -> Option<String> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .find(|w| w.starts_with("eyJ") && w.split('.').count() == 3)
        .map(String::from)
}

#[test]
fn dev_mode_prints_a_working_token() {
    dev_token_connects(&["--dev"]);
    // With the claims and algorithm a server requires, the token carries them.
    let mut strict = vec!["--dev"];
    strict.extend(STRICT_JWT_FLAGS);
    dev_token_connects(&strict);
}

/// Starts `throng serve` with `flags`, connects with the token its banner prints.
fn dev_token_connects(flags: &[&str]) {
    let mut p = Proc::spawn(&serve_args(flags));
    let mut addrs = None;
    let mut tok = None;
    p.find(Duration::from_secs(10), |_, line| {
        if tok.is_none() {
            tok = find_jwt(line);
        }
        if addrs.is_none() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                let msg = v["fields"]["message"].as_str().or(v["message"].as_str());
                if msg == Some("listening") {
                    let get = |k: &str| {
                        v["fields"][k]
                            .as_str()
                            .and_then(|s| s.parse::<SocketAddr>().ok())
                    };
                    if let (Some(a), Some(b)) = (get("client_addr"), get("api_addr")) {
                        addrs = Some((a, b));
                    }
                }
            }
        }
        (tok.is_some() && addrs.is_some()).then_some(())
    });
    let (ws, _api) = addrs.unwrap();
    let tok = tok.unwrap();
    let c = Client::connect(ws, &tok)
        .unwrap_or_else(|e| panic!("dev token refused with {flags:?}: {e}"));
    assert!(c.welcome["user"].is_string());
    drop(c);
    let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0);
    p.wait_exit(Duration::from_secs(5));
}

/// `throng serve --dev` with `flags`: the stdout lines of its banner, once the Stats line
/// is out.
fn dev_banner(flags: &[&str]) -> Vec<String> {
    let mut p = Proc::spawn(&serve_args(flags));
    p.find(Duration::from_secs(10), |stream, line| {
        (stream == "stdout" && line.starts_with("Stats:")).then_some(())
    });
    p.drain(Duration::from_millis(300))
        .lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .map(String::from)
        .collect()
}

/// The words `sh` makes of `args` (part of a command the banner prints).
fn shell_words(args: &str) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s\\n' {args}"))
        .output()
        .expect("run sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sh cannot parse {args:?}: {err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn dev_banner_commands_paste_whatever_the_key_holds() {
    let key = "ab'c d\"$HOME";
    let banner = dev_banner(&["--dev", "--api-key", key]);
    let line = |prefix: &str| {
        banner
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in {banner:#?}"))
    };
    let stats = shell_words(line("Stats: curl -s "));
    assert_eq!(stats.len(), 3, "{stats:?}");
    assert_eq!(stats[..2], ["-H", &format!("Authorization: Bearer {key}")]);
    assert!(stats[2].starts_with("http://127.0.0.1:"), "{stats:?}");
    assert!(stats[2].ends_with("/v1/stats"), "{stats:?}");
    let connect = shell_words(line("  python3 -m websockets "));
    assert_eq!(connect.len(), 1, "{connect:?}");
    assert!(connect[0].starts_with("ws://127.0.0.1:"), "{connect:?}");
    assert!(connect[0].contains("/ws?token=eyJ"), "{connect:?}");
}

#[test]
fn dev_banner_names_certificates_by_absolute_path() {
    // Given relative to the server's directory, the path must still work in the "other
    // terminal" the banner's commands are for.
    let tls = tls::TlsDir::new("banner");
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let rel =
        |p: &std::path::Path| format!("{up}{}", p.display().to_string().trim_start_matches('/'));
    let (cert, key) = (rel(&tls.cert), rel(&tls.key));
    let flags = ["--dev", "--api-tls-cert", &cert, "--api-tls-key", &key];
    let banner = dev_banner(&flags);
    let stats = banner
        .iter()
        .find_map(|l| l.strip_prefix("Stats: curl -s "))
        .unwrap_or_else(|| panic!("no Stats line in {banner:#?}"));
    let words = shell_words(stats);
    assert_eq!(words[0], "--cacert", "{words:?}");
    let shown = std::path::Path::new(&words[1]);
    assert!(shown.is_absolute(), "{words:?}");
    assert_eq!(
        std::fs::read(shown).ok(),
        std::fs::read(&tls.cert).ok(),
        "{words:?}"
    );
}

#[test]
fn dev_banner_without_an_hmac_secret_offers_no_token() {
    let key =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rs256_public.pem");
    let key = key.to_str().unwrap();
    let banner = dev_banner(&["--dev", "--jwt-algorithm", "RS256", "--jwt-public-key", key]);
    let text = banner.join("\n");
    assert!(text.contains("identity provider (RS256)"), "{text}");
    for absent in [
        "token=",
        "cannot sign",
        "Demo page",
        "/demo",
        "JWT secret",
        "Token (",
    ] {
        assert!(!text.contains(absent), "{absent:?} in:\n{text}");
    }
    // The push commands need no token and stay.
    assert!(
        text.contains("Stats: curl -s -H 'Authorization: Bearer "),
        "{text}"
    );
}

#[test]
fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let mut p = Proc::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--shards",
        "2",
    ]);
    let line = p.find(Duration::from_secs(10), |stream, line| {
        (stream == "stderr" && line.contains("listening")).then(|| line.to_string())
    });
    assert!(!line.contains('\x1b'), "escape codes in {line:?}");
    assert!(line.contains("INFO"), "{line:?}");
}

#[test]
fn token_refuses_an_empty_secret_and_a_ttl_out_of_range() {
    for (args, needle) in [
        (
            vec!["token", "--secret", "", "--sub", "x"],
            "--secret is empty",
        ),
        (
            vec!["token", "--secret", SECRET, "--sub", "x", "--ttl-secs", "0"],
            "--ttl-secs must be greater than 0",
        ),
        // Past ten years, and past what `exp` can hold (it used to wrap into the past).
        (
            vec![
                "token",
                "--secret",
                SECRET,
                "--sub",
                "x",
                "--ttl-secs",
                "315360001",
            ],
            "--ttl-secs is 315360001; at most 315360000",
        ),
        (
            vec![
                "token",
                "--secret",
                SECRET,
                "--sub",
                "x",
                "--ttl-secs",
                "18446744073709551615",
            ],
            "--ttl-secs is 18446744073709551615",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("THRONG_JWT_SECRET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "no token printed for {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn unsafe_serve_settings_exit_2_naming_the_key() {
    for (extra, needle) in [
        (vec!["--jwt-secret", SECRET, "--api-key", ""], "api_key"),
        (vec!["--jwt-secret", "too-short"], "[jwt] secret"),
        (
            vec!["--jwt-secret", SECRET, "--api-listen", "0.0.0.0:0"],
            "--insecure-api",
        ),
    ] {
        // serve_args gives loopback listeners; the last case overrides the API one.
        let mut args: Vec<&str> = vec!["serve", "--listen", "127.0.0.1:0"];
        if !extra.contains(&"--api-listen") {
            args.extend(["--api-listen", "127.0.0.1:0"]);
        }
        args.extend(extra.iter().copied());
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("THRONG_JWT_SECRET")
            .env_remove("THRONG_API_KEY")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn post_drain_ends_the_process_with_0_and_a_second_sigterm_ends_it_at_once() {
    // POST /v1/drain: the process drains and exits 0 by itself.
    let mut p = Proc::spawn(&serve_args(&[
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--drain-ms",
        "300",
    ]));
    let (ws, api) = p.listening();
    let mut a = Client::connect(ws, &token("a")).expect("connect to the binary");
    let r = HttpConn::connect(api).request("POST", "/v1/drain", Some(API_KEY), None);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(a.recv()["type"], "reconnect");
    assert_eq!(a.expect_close(), Closed::Code(Some(1001)));
    drop(a);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st:?}");

    // A long drain: a second SIGTERM (or Ctrl-C twice) does not wait for it, and exits
    // 128 + the signal, as a shell reports a process that signal killed.
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut p = Proc::spawn(&serve_args(&[
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--drain-ms",
            "600000",
        ]));
        let (ws, _) = p.listening();
        let mut a = Client::connect(ws, &token("a")).expect("connect to the binary");
        let pid = p.child.id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        assert_eq!(a.recv()["type"], "reconnect");
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let st = p.wait_exit(Duration::from_secs(5));
        assert_eq!(st.code(), Some(code), "the second signal {signal}: {st:?}");
    }
}

#[test]
fn sighup_with_nothing_to_reload_says_so() {
    let mut p = Proc::spawn(&serve_args(&["--jwt-secret", SECRET]));
    p.listening();
    let pid = p.child.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let line = p.find(Duration::from_secs(10), |_, l| {
        l.contains("SIGHUP").then(|| l.to_string())
    });
    assert!(
        line.contains("nothing to reload") && line.contains("--api-key-file"),
        "{line}"
    );
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(p.wait_exit(Duration::from_secs(10)).success());
}

/// Review s21c: a batch POSTed to an upstream that never answers held the exit for up to
/// 30 s past the documented 3 s flush, and the warning counted only part of what was lost.
#[test]
fn an_events_upstream_that_never_answers_holds_the_exit_to_the_flush_time() {
    use std::io::Read;
    // Takes every connection and reads it, never answering.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/events", hole.local_addr().unwrap());
    let (got_tx, got_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in hole.incoming() {
            let Ok(mut s) = s else { return };
            let got_tx = got_tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let _ = got_tx.send(n);
                }
            });
        }
    });
    let mut p = Proc::spawn(&serve_args(&[
        "--jwt-secret",
        SECRET,
        "--events-url",
        &url,
        "--drain-ms",
        "200",
        "--shutdown-grace-ms",
        "500",
    ]));
    let (ws, _) = p.listening();
    let mut a = Client::connect(ws, &token("a")).expect("connect to the binary");
    // The first is POSTed, and waits for an answer that never comes; two more wait.
    for (i, d) in ["one", "two", "three"].into_iter().enumerate() {
        a.send(json!({"type": "send", "data": d}));
        assert_eq!(a.recv()["type"], "sent");
        if i == 0 {
            got_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the upstream got a request");
        }
    }
    let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let sent = Instant::now();
    assert_eq!(a.expect_close(), Closed::Code(Some(1001)));
    // The drain (200 ms), the 3 s flush and its slack; the POST alone would wait 10 s.
    let st = p.wait_exit(Duration::from_secs(30));
    let took = sent.elapsed();
    let out = p.drain(Duration::from_millis(200));
    assert!(st.success(), "exit status {st:?}; output:\n{out}");
    assert!(
        took < Duration::from_secs(8),
        "exit took {took:?}; output:\n{out}"
    );
    // The send in flight and the two behind it: all counted, in one warning (the
    // thread, ending as the server gives up on it, does not say it again).
    let warned: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("before the events upstream took every event"))
        .collect();
    assert_eq!(warned.len(), 1, "one warning of the loss; output:\n{out}");
    assert!(warned[0].contains("\"dropped\":3"), "{}", warned[0]);
}
