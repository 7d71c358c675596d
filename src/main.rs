//! The `throng` command: `serve` runs the server, `token` mints a token, `doctor` checks
//! the host.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use throng::config::{Config, LogFormat, ServeArgs};
use throng::Server;

/// High-density WebSocket push server.
#[derive(Parser)]
#[command(name = "throng", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print a signed HS256/384/512 token, for operators and tests.
    Token(TokenArgs),
    /// Check this host's limits for a number of connections (exit 1 on any FAIL).
    Doctor(throng::doctor::DoctorArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// The HMAC secret (or THRONG_JWT_SECRET).
    #[arg(long, env = "THRONG_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The user id.
    #[arg(long)]
    sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// Comma-separated topic patterns the token grants.
    #[arg(long, value_delimiter = ',')]
    topics: Option<Vec<String>>,
    /// Comma-separated topic patterns the token may publish to.
    #[arg(long, value_delimiter = ',')]
    publish: Option<Vec<String>>,
    /// The HMAC algorithm: HS256, HS384 or HS512 (the server's `jwt.algorithm`).
    #[arg(long, default_value = "HS256", value_parser = parse_hmac)]
    algorithm: jsonwebtoken::Algorithm,
    /// The `iss` claim (for a server with `--jwt-issuer`).
    #[arg(long)]
    issuer: Option<String>,
    /// The `aud` claim (for a server with `--jwt-audience`).
    #[arg(long)]
    audience: Option<String>,
}

/// `--algorithm` of `throng token`: an HMAC algorithm by name.
fn parse_hmac(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    match s {
        "HS256" => Ok(jsonwebtoken::Algorithm::HS256),
        "HS384" => Ok(jsonwebtoken::Algorithm::HS384),
        "HS512" => Ok(jsonwebtoken::Algorithm::HS512),
        _ => Err(format!(
            "{s:?} is not HS256, HS384 or HS512 (tokens for RS/ES/EdDSA keys are signed by your identity provider)"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(t) => token(t),
        Command::Serve(args) => serve(*args),
        Command::Doctor(args) => doctor(args),
    }
}

fn doctor(args: throng::doctor::DoctorArgs) -> ExitCode {
    let target = throng::doctor::Target {
        connections: args.target_connections,
        outbound_budget: args.max_outbound_total_bytes,
        tls: args.tls,
        api_max_connections: args.api_max_connections,
        backlog: args.backlog,
    };
    let report = throng::doctor::check_target(&args.proc_root, &args.sys_root, &target);
    print!("{}", throng::doctor::render(&report));
    if report.has_fail() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn token(t: TokenArgs) -> ExitCode {
    if t.secret.is_empty() {
        eprintln!(
            "throng token: --secret is empty: give the server's HS256 secret \
             (--secret or THRONG_JWT_SECRET)"
        );
        return ExitCode::from(2);
    }
    if t.ttl_secs == 0 {
        eprintln!("throng token: --ttl-secs must be greater than 0 (a token with no lifetime is already expired)");
        return ExitCode::from(2);
    }
    // Ten years, as for durations in the config; and `exp` must not wrap past u64.
    let max_ttl = throng::config::MAX_DURATION_MS / 1000;
    let exp = jsonwebtoken::get_current_timestamp().checked_add(t.ttl_secs);
    if t.ttl_secs > max_ttl || exp.is_none() {
        eprintln!(
            "throng token: --ttl-secs is {}; at most {max_ttl} (ten years) is taken",
            t.ttl_secs
        );
        return ExitCode::from(2);
    }
    if t.secret.len() < throng::config::MIN_SECRET_BYTES {
        eprintln!(
            "throng token: warning: the secret is {} bytes; `throng serve` accepts HMAC \
             secrets under {} bytes only with --dev",
            t.secret.len(),
            throng::config::MIN_SECRET_BYTES
        );
    }
    if let Err(e) = throng::auth::validate_user(&t.sub) {
        eprintln!("throng token: --sub: {e}");
        return ExitCode::from(2);
    }
    for (flag, list) in [("--topics", &t.topics), ("--publish", &t.publish)] {
        for p in list.iter().flatten() {
            if let Err(e) = throng::topic::TopicPattern::parse(p) {
                eprintln!("throng token: {flag}: {p:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let options = throng::auth::MintOptions {
        algorithm: Some(t.algorithm),
        issuer: t.issuer.as_deref(),
        audience: t.audience.as_deref(),
    };
    match throng::auth::mint(
        &t.secret,
        &t.sub,
        t.ttl_secs,
        t.topics.as_deref(),
        t.publish.as_deref(),
        options,
    ) {
        Ok(tok) => {
            println!("{tok}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("throng token: cannot sign: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour escapes only for a person at a terminal: piped or sent to journald
    // (tuning/throng.service), every line would carry them.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::from_serve_args(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    match throng::fdlimit::raise_to_hard() {
        Ok(nofile) => {
            let allowed = throng::fdlimit::client_ceiling(nofile, config.api_max_connections);
            if (config.max_connections as u64) > allowed {
                tracing::warn!(
                    rlimit_nofile = nofile,
                    max_connections = config.max_connections,
                    "the open-file limit allows only about {allowed} connections; clients \
                     beyond that get 503 over_capacity (raise LimitNOFILE, see tuning/)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dev = config.dev;
    let banner_config = config.clone();
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            // A certificate or key that cannot be used (or JWT keys that cannot be had)
            // is a configuration error.
            match e {
                // Already "config error: key (--flag): ...", as the other config errors.
                throng::server::StartError::Tls { .. } => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
                throng::server::StartError::Key(_) => {
                    eprintln!("throng: {e}");
                    return ExitCode::from(2);
                }
                _ => {
                    eprintln!("throng: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    tracing::info!(
        client_addr = %server.client_addr(),
        api_addr = %server.api_addr(),
        shards = banner_config.shards,
        "listening"
    );
    if dev {
        print_dev_banner(&server, &banner_config);
    }
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stops = 0;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                let _ = first_tx.send(sig);
                continue;
            }
            stops += 1;
            // A second stop signal ends the drain at once, with the status a shell gives
            // a process that signal killed (143 for SIGTERM, 130 for SIGINT).
            if stops > 1 {
                std::process::exit(128 + sig);
            }
            let _ = first_tx.send(sig);
        }
    });
    // Until a signal arrives or `POST /v1/drain` starts the drain itself.
    loop {
        match first_rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(signal_hook::consts::SIGHUP) => reload(&server),
            Ok(sig) => {
                tracing::info!(
                    signal = sig,
                    drain_ms = banner_config.drain.as_millis() as u64,
                    grace_ms = banner_config.shutdown_grace.as_millis() as u64,
                    "draining"
                );
                server.shutdown();
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if server.is_draining() => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // The signal thread is gone (it cannot install handlers twice): keep polling.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) if server.is_draining() => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    server.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `SIGHUP`: the TLS certificates and keys (client listener, push API), the JWT key file,
/// `api_key_file`, `events_key_file`, `events_ca` and the Redis TLS files are read again;
/// a bad file keeps what was in use.
fn reload(server: &Server) {
    let mut any = false;
    any |= logged(
        server.reload_tls(),
        |()| tracing::info!("SIGHUP: TLS certificate reloaded"),
        "SIGHUP: TLS certificate not reloaded; the previous one stays in use",
    );
    any |= logged(
        server.reload_api_tls(),
        |()| tracing::info!("SIGHUP: push API certificate reloaded"),
        "SIGHUP: push API certificate not reloaded; the previous one stays in use",
    );
    any |= logged(
        server.reload_jwt_keys(),
        |n| tracing::info!(keys = n, "SIGHUP: JWT keys reloaded"),
        "SIGHUP: JWT keys not reloaded; the keys in use stay",
    );
    any |= logged(
        server.reload_events_ca(),
        |n| tracing::info!(certificates = n, "SIGHUP: events_ca reloaded"),
        "SIGHUP: events_ca not reloaded; the previous roots stay in use",
    );
    if server.fetch_jwt_keys() {
        any = true;
        tracing::info!("SIGHUP: fetching the JWT keys from jwks_url");
    }
    any |= logged(
        server.reload_events_key(),
        |()| tracing::info!("SIGHUP: events_key_file reloaded"),
        "SIGHUP: events_key_file not reloaded; the key in use stays",
    );
    any |= logged(
        server.reload_api_keys(),
        |n| tracing::info!(keys = n, "SIGHUP: push API keys reloaded"),
        "SIGHUP: push API keys not reloaded; the keys in use stay",
    );
    any |= logged(
        server.reload_redis_tls(),
        |()| tracing::info!("SIGHUP: Redis TLS files reloaded; new links use them"),
        "SIGHUP: Redis TLS files not reloaded; the previous ones stay in use",
    );
    if !any {
        tracing::info!(
            "SIGHUP: nothing to reload (no --tls-cert, --api-tls-cert, JWT key file, \
             --api-key-file, --events-key-file, --events-ca, --redis-ca or \
             --redis-client-cert)"
        );
    }
}

/// Logs one reload's outcome: `done` when it took, the error with `failed` when not.
/// Whether there was anything to reload.
fn logged<T, E: std::fmt::Display>(
    result: Option<Result<T, E>>,
    done: impl FnOnce(T),
    failed: &str,
) -> bool {
    match result {
        None => false,
        Some(Ok(v)) => {
            done(v);
            true
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "{failed}");
            true
        }
    }
}

/// `s` in single quotes for a POSIX shell (a path with spaces or quotes still pastes).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn print_dev_banner(server: &Server, config: &Config) {
    let host = |a: std::net::SocketAddr| {
        if a.ip().is_unspecified() {
            format!("127.0.0.1:{}", a.port())
        } else {
            a.to_string()
        }
    };
    // With --tls-cert the client listener speaks only TLS.
    let (ws_scheme, page_scheme) = if config.tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let ws = format!("{ws_scheme}://{}/ws", host(server.client_addr()));
    let api_scheme = if config.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let api = format!("{api_scheme}://{}", host(server.api_addr()));
    let demo = format!("{page_scheme}://{}/demo", host(server.client_addr()));
    // With a certificate of one's own (self-signed, say) the clients need to be told to
    // trust it. Absolute, so the command pastes into a terminal in another directory.
    let trusting = |files: &Option<throng::tls::TlsFiles>| {
        files.as_ref().map(|f| {
            let path = std::path::absolute(&f.cert).unwrap_or_else(|_| f.cert.clone());
            shell_quote(&path.display().to_string())
        })
    };
    let (wscat, python) = match trusting(&config.tls) {
        Some(ca) => (
            format!("npx -y wscat --ca {ca} -c"),
            format!("SSL_CERT_FILE={ca} python3 -m websockets"),
        ),
        None => ("npx -y wscat -c".into(), "python3 -m websockets".into()),
    };
    let curl = match trusting(&config.api_tls) {
        Some(ca) => format!("curl -s --cacert {ca}"),
        None => "curl -s".into(),
    };
    let api_key = config.api_key.clone().unwrap_or_default();
    // Every value that goes into a command is quoted whole: a key or secret given on the
    // command line may hold a quote or a space.
    let auth = shell_quote(&format!("Authorization: Bearer {api_key}"));
    let push_url = shell_quote(&format!("{api}/v1/push"));
    let stats_url = shell_quote(&format!("{api}/v1/stats"));
    let header = format!(
        "
Throng is running in dev mode (do not use these credentials in production).

  WebSocket     {ws}
  Push API      {api}"
    );
    let pushes = format!(
        "Push to alice from another terminal:
  {curl} -X POST {push_url} -H {auth} \\
       -d '{{\"user\":\"alice\",\"data\":{{\"hello\":\"world\"}}}}'

Stats: {curl} -H {auth} {stats_url}"
    );
    let rooms = ["room:*".to_string()];
    // Only an HMAC secret lets the server sign a token (and serve the demo page, which
    // signs its own); RS256/ES256 tokens come from the identity provider's private key.
    let minted = match config.jwt.secret.as_deref() {
        Some(secret) => throng::auth::mint(
            secret,
            "alice",
            24 * 3600,
            Some(&rooms),
            Some(&rooms),
            throng::auth::MintOptions::accepted_by(&config.jwt),
        )
        .map(|t| (secret, t))
        .map_err(|e| format!("No dev token: it cannot be signed ({e})")),
        None => Err(format!(
            "Tokens come from your identity provider ({:?}): this server has no HMAC secret\n  \
             to sign one, so there is no token, connect command or demo page here (the demo\n  \
             page needs an HMAC secret)",
            config.jwt.algorithm
        )),
    };
    let (secret, token) = match minted {
        Ok(st) => st,
        Err(why) => {
            println!(
                "{header}
  API key       {api_key}

  {why}.

{pushes}
"
            );
            return;
        }
    };
    let connect = shell_quote(&format!("{ws}?token={token}"));
    println!(
        "{header}
  JWT secret    {secret}
  API key       {api_key}
  Token (user \"alice\", may subscribe and publish to room:*, valid 24 h):
  {token}

Demo page (connects as alice with the browser client; subscribe, publish, see pushes):
  {demo}

Connect as alice (any WebSocket client; two options):
  {wscat} {connect}
  {python} {connect}

{pushes}

Subscribe (type into the client) and push to the topic:
  {{\"type\":\"subscribe\",\"topic\":\"room:1\"}}
  {curl} -X POST {push_url} -H {auth} \\
       -d '{{\"topic\":\"room:1\",\"data\":\"hi room\"}}'
"
    );
}
