//! `chat demo`: the one command that starts a chat room: `throng serve` wired to the
//! upstream (this process), and the commands to run clients in other terminals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::server::{random_hex, ServeOptions, Throng};
use crate::upstream::Upstream;

#[derive(Args)]
pub struct DemoArgs {
    /// Throng's WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: String,
    /// Throng's push API listener.
    #[arg(long, default_value = "127.0.0.1:8701")]
    api_listen: String,
    /// The upstream's listener (where Throng POSTs events).
    #[arg(long, default_value = "127.0.0.1:0")]
    upstream_listen: String,
    /// The `throng` binary (default: built from this checkout with cargo).
    #[arg(long)]
    throng: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> ExitCode {
    match demo(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: DemoArgs) -> Result<ExitCode, String> {
    let bin = crate::server::locate(args.throng)?;
    // A fresh secret and keys each run: whatever an earlier run printed is useless now.
    let secret = random_hex(32);
    let api_key = random_hex(24);
    let events_key = random_hex(24);
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let upstream = Upstream::start(&args.upstream_listen, Some(events_key.clone()))?;
    let mut throng = Throng::start(&ServeOptions {
        bin,
        listen: args.listen.clone(),
        api_listen: args.api_listen.clone(),
        secret: secret.clone(),
        api_key: api_key.clone(),
        events_url: upstream.events_url(),
        events_key,
        // Enough for a demo, and within any open-file limit (no warning about it).
        extra: vec!["--max-connections".into(), "1000".into()],
        echo_log: true,
    })
    .map_err(|e| {
        format!("{e}\n(another server on the same port? give --listen and --api-listen)")
    })?;
    upstream.set_push_api(&throng.api_url, &api_key);
    let example = crate::server::cargo_run_command();
    let client = |user: &str| {
        format!(
            "{example} client --url {} --secret {secret} --user {user} --room lobby",
            throng.ws_url
        )
    };
    println!(
        "
Throng chat demo: a chat room on a real Throng server (throng serve, pid {pid}).

  WebSocket  {ws}
  Push API   {api}   (API key {api_key})
  Upstream   {events}   (this process: prints joins, leaves and sends; pushes the online count)

Start members in other terminals (in {dir}):

  {alice}
  {bob}

Type a line to send it. /who asks the upstream who is online. /drop 10 cuts the
connection for 10 s: meanwhile talk in the other terminal, and the missed messages come
back as history when it reconnects. /quit leaves (the others see the count drop).
Ctrl-C here stops the server.
",
        pid = throng.pid(),
        ws = throng.ws_url,
        api = throng.api_url,
        events = upstream.events_url(),
        dir = env!("CARGO_MANIFEST_DIR"),
        alice = client("alice"),
        bob = client("bob"),
    );
    let mut signals = signals;
    loop {
        if let Some(sig) = signals.pending().next() {
            println!("chat demo: signal {sig}: stopping the server");
            break;
        }
        if !throng.running() {
            upstream.stop();
            return Err(format!(
                "throng serve stopped by itself; its last log lines:\n{}",
                throng.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    upstream.stop();
    throng.stop();
    Ok(ExitCode::SUCCESS)
}
