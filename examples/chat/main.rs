//! A chat room on Throng, the example of issue 12: join, leave, messages, history on
//! reconnect and the online count. See examples/chat/README.md.
//!
//! ```sh
//! cargo run --release --example chat -- demo       # server + upstream; prints client commands
//! cargo run --release --example chat -- selftest   # the scripted end-to-end check
//! ```

mod client;
mod conn;
mod demo;
mod http;
mod pushapi;
mod rooms;
mod selftest;
mod server;
mod upstream;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A chat room on Throng.
#[derive(Parser)]
#[command(name = "chat")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start `throng serve` and the upstream, and print how to start clients.
    Demo(demo::DemoArgs),
    /// An interactive member of a room.
    Client(client::ClientArgs),
    /// The upstream alone, for a server started by hand with `--events-url`.
    Upstream(UpstreamArgs),
    /// Run the scripted end-to-end check; exit 0 when it passes.
    Selftest(SelftestArgs),
}

#[derive(Args)]
struct UpstreamArgs {
    /// Where Throng POSTs events: run `throng serve --events-url http://<this>/events
    /// --lifecycle-events`.
    #[arg(long, default_value = "127.0.0.1:8702")]
    listen: String,
    /// Throng's push API.
    #[arg(long, default_value = "http://127.0.0.1:8701")]
    api: String,
    /// Throng's API key.
    #[arg(long, env = "THRONG_API_KEY", hide_env_values = true)]
    api_key: String,
    /// The bearer token Throng sends with events (its --events-key), if any.
    #[arg(long, env = "THRONG_EVENTS_KEY", hide_env_values = true)]
    events_key: Option<String>,
}

#[derive(Args)]
struct SelftestArgs {
    /// The `throng` binary (default: built from this checkout with cargo).
    #[arg(long)]
    throng: Option<PathBuf>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
        Command::Client(args) => client::run(args),
        Command::Upstream(args) => run_upstream(&args),
        Command::Selftest(args) => run_selftest(args),
    }
}

fn run_upstream(args: &UpstreamArgs) -> ExitCode {
    let up = match upstream::Upstream::start(&args.listen, args.events_key.clone()) {
        Ok(up) => up,
        Err(e) => {
            eprintln!("chat upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    up.set_push_api(&args.api, &args.api_key);
    println!(
        "upstream: give throng serve --events-url {} --lifecycle-events{}; Ctrl-C stops",
        up.events_url(),
        if args.events_key.is_some() {
            " --events-key <the same key>"
        } else {
            ""
        }
    );
    loop {
        std::thread::park();
    }
}

fn run_selftest(args: SelftestArgs) -> ExitCode {
    let result =
        server::locate(args.throng).and_then(|throng| selftest::run(&selftest::Options { throng }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("selftest FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
