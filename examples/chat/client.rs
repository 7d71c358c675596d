//! The interactive terminal client: lines typed are published to the room, everything
//! the room says is printed, and a dropped connection comes back with its history.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;

use crate::conn::{Auth, Chat, Event, Options};
use crate::view;

#[derive(Args)]
pub struct ClientArgs {
    /// Your user name (the token's `sub`).
    #[arg(long)]
    user: String,
    /// The room to join (topic `room:<room>`).
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Throng's WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8700/ws")]
    url: String,
    /// The server's JWT secret: tokens are minted here for each connection.
    #[arg(long, env = "THRONG_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A token minted elsewhere (e.g. `throng token --sub bob --topics 'room:*'
    /// --publish 'room:*'`), instead of --secret.
    #[arg(long, conflicts_with = "secret")]
    token: Option<String>,
}

const HELP: &str = "type a line to send it; /who lists who is online; /drop [SECS] cuts \
                    the connection for SECS seconds (default 10) to show history on \
                    reconnect; /quit (or Ctrl-D) leaves";

/// What the stdin thread hands the chat loop.
enum Input {
    Line(String),
    End,
}

pub fn run(args: ClientArgs) -> ExitCode {
    let auth = match (args.secret, args.token) {
        (_, Some(token)) => Auth::Token(token),
        (Some(secret), None) if !secret.is_empty() => Auth::Secret(secret),
        _ => {
            eprintln!(
                "chat client: give the server's JWT secret (--secret or THRONG_JWT_SECRET), \
                 or a token (--token); `chat demo` prints the command to use"
            );
            return ExitCode::from(2);
        }
    };
    let mut chat = Chat::new(Options {
        url: args.url.clone(),
        user: args.user.clone(),
        room: args.room,
        auth,
    });
    println!(
        "-- {} joining {} at {}; {HELP}",
        args.user,
        chat.topic(),
        args.url
    );
    let (tx, rx) = mpsc::channel();
    // Reading stdin blocks; the chat loop must not, so the reading has its own thread.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::End);
    });
    loop {
        while let Ok(input) = rx.try_recv() {
            match input {
                Input::End => return leave(&mut chat),
                Input::Line(line) => {
                    if command(&mut chat, line.trim()).is_break() {
                        return leave(&mut chat);
                    }
                }
            }
        }
        if let Some(event) = chat.next(Duration::from_millis(100)) {
            if let Some(line) = view::line(&event) {
                println!("{line}");
            }
            if let Event::Gone { .. } = event {
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Carries out one typed line; Break means the user wants to leave.
fn command(chat: &mut Chat, line: &str) -> std::ops::ControlFlow<()> {
    let mut words = line.split_whitespace();
    match words.next() {
        None => {}
        Some("/quit" | "/exit") => return std::ops::ControlFlow::Break(()),
        Some("/who") => chat.who(),
        Some("/drop") => {
            let secs = words.next().and_then(|s| s.parse().ok()).unwrap_or(10);
            chat.drop_connection(Duration::from_secs(secs));
        }
        Some("/help") => println!("-- {HELP}"),
        Some(w) if w.starts_with('/') => println!("-- unknown command {w}; {HELP}"),
        Some(_) => chat.say(line),
    }
    std::ops::ControlFlow::Continue(())
}

fn leave(chat: &mut Chat) -> ExitCode {
    chat.leave();
    println!("-- left {}", chat.topic());
    ExitCode::SUCCESS
}
