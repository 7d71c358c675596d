//! throng-load: the load generator for Throng.
//!
//! `connect` opens and holds many WebSocket connections and measures connect rate,
//! handshake latency, failures and (with `--server-pid`) memory per connection. `push`
//! holds connections and drives the push API, measuring delivery completeness and
//! push-to-client latency. `churn` pushes while a share of the connections disconnect
//! and reconnect. `capacity` ramps connections up step by step, measuring memory and push
//! latency per step. `resume` pushes while a share of the connections drop abruptly and
//! resume with `since`/`epoch`, and proves per user and topic stream that nothing went
//! missing or came twice (pushes a `resumed:false` did not replay are counted apart).
//! `deploy` drains one server while its clients follow the
//! reconnect hints to a second one. `chat` has rooms of members publishing to their own room
//! and proves every member got every accepted message once, in order. `floor` measures
//! this host's kernel floor for a heartbeat or a broadcast delivery with a minimal epoll
//! server of its own, to read the server's figures against. `--procs K` runs K
//! worker processes over disjoint user ranges (sharing `--source-ips` evenly) and merges
//! their results.

mod capacity;
mod chat;
mod churn;
mod cli;
mod client;
mod deflate;
mod deploy;
mod floor;
mod frame;
mod local;
mod plot;
mod progress;
mod push;
mod report;
mod resume;
mod server_msg;
mod sources;
mod tls;
mod track;
mod util;
mod worker;
mod ws_conn;

use clap::Parser;
use cli::{Cli, Cmd};
use report::Report;
use std::path::Path;

fn main() {
    let cli = Cli::parse();
    match run(&cli.cmd) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("throng-load: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs one subcommand; prints and writes its report unless this process is a worker
/// (whose result goes to the parent).
fn run(cmd: &Cmd) -> Result<i32, String> {
    check_outputs(cmd)?;
    let (rep, json, plot) = match cmd {
        Cmd::Connect(c) => (run_mode(c, None, None)?, &c.json, &None),
        Cmd::Push(p) => (run_mode(&p.conn, Some(p), None)?, &p.conn.json, &None),
        Cmd::Churn(ch) => {
            cli::validate_churn(ch)?;
            let p = &ch.push;
            (run_mode(&p.conn, Some(p), Some(ch))?, &p.conn.json, &None)
        }
        Cmd::Capacity(a) => {
            cli::validate_capacity(a)?;
            let c = a.connect_args();
            cli::validate(&c, None)?;
            let rep = if a.worker {
                capacity::run_worker(a)?;
                None
            } else {
                Some(capacity::run(a)?)
            };
            (rep, &a.json, &a.plot)
        }
        Cmd::Resume(a) => {
            cli::validate_resume(a)?;
            let (mut rep, code) = resume::run(a)?;
            let code = code.max(rep.judge());
            output(&mut rep, a.churn.push.conn.json.as_deref())?;
            return Ok(code);
        }
        Cmd::Deploy(a) => {
            cli::validate_deploy(a)?;
            let (mut rep, code) = deploy::run(a)?;
            let code = code.max(rep.judge());
            output(&mut rep, a.push.conn.json.as_deref())?;
            return Ok(code);
        }
        Cmd::Floor(a) => return floor::run(a),
        Cmd::Chat(a) => {
            cli::validate_chat(a)?;
            // A worker sends its result to the parent and prints nothing.
            let Some((mut rep, code)) = chat::run(a)? else {
                return Ok(0);
            };
            // The same verdict as every other mode: refused connections fail a chat run
            // too, and the summary ends with its `result:` line.
            let code = code.max(rep.judge());
            output(&mut rep, a.json.as_deref())?;
            return Ok(code);
        }
    };
    let mut code = 0;
    if let Some(mut rep) = rep {
        code = rep.judge();
        output(&mut rep, json.as_deref())?;
        // After the report, so a plot that cannot be drawn loses no figures.
        if let Some(path) = plot {
            capacity::draw(path, &rep)?;
        }
    }
    Ok(code)
}

/// A connect, push or churn run: in this process, over workers, or as a worker.
fn run_mode(
    c: &cli::ConnectArgs,
    p: Option<&cli::PushArgs>,
    ch: Option<&cli::ChurnArgs>,
) -> Result<Option<Report>, String> {
    cli::validate(c, p)?;
    if c.worker {
        worker::run_worker(c, p, ch)?;
        Ok(None)
    } else if c.procs > 1 {
        worker::run_parent(c, p, ch).map(Some)
    } else {
        local::run_single(c, p, ch).map(Some)
    }
}

/// Checks, before the run, that the report files it will write can be written, so a
/// long run does not lose its figures at the end.
fn check_outputs(cmd: &Cmd) -> Result<(), String> {
    let (json, plot) = match cmd {
        Cmd::Connect(c) => (&c.json, &None),
        Cmd::Push(p) => (&p.conn.json, &None),
        Cmd::Churn(ch) => (&ch.push.conn.json, &None),
        Cmd::Capacity(a) => (&a.json, &a.plot),
        Cmd::Resume(a) => (&a.churn.push.conn.json, &None),
        Cmd::Deploy(a) => (&a.push.conn.json, &None),
        Cmd::Chat(a) => (&a.json, &None),
        Cmd::Floor(a) => (&a.json, &None),
    };
    for (flag, path) in [("--json", json), ("--plot", plot)] {
        if let Some(path) = path {
            check_writable(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Whether `path` can be written: an existing file is opened for appending (so a report
/// already there is kept until the run ends and replaces it); a new one is created and
/// removed again.
fn check_writable(path: &Path) -> Result<(), String> {
    use std::fs::OpenOptions;
    if path.is_dir() {
        return Err("is a directory".into());
    }
    if path.exists() {
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("cannot be written: {e}"));
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot be created: {e}"))?;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Prints the summary and writes the JSON report.
fn output(rep: &mut Report, json: Option<&Path>) -> Result<(), String> {
    println!("{}", rep.summary().trim_end());
    rep.strip_raw();
    if let Some(path) = json {
        let j = serde_json::to_string_pretty(rep).map_err(|e| e.to_string())?;
        std::fs::write(path, j + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("throng-load: wrote {}", path.display());
    }
    Ok(())
}
