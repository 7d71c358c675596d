//! Live progress: counters, their worker line encoding, and how they are shown (a bar on
//! a terminal, plain lines otherwise, `PROGRESS` lines to the parent from a worker).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Live counters of one process (or, summed, of all workers).
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub attempted: u64,
    pub opened: u64,
    pub open_now: u64,
    pub failed: u64,
    pub disconnected: u64,
    pub received: u64,
    pub accepted: u64,
    pub retries: u64,
}

impl Progress {
    /// The numbers of a worker's `PROGRESS` line.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}",
            self.attempted,
            self.opened,
            self.open_now,
            self.failed,
            self.disconnected,
            self.received,
            self.accepted,
            self.retries
        )
    }
    /// Reads what `encode` wrote.
    pub fn decode(s: &str) -> Option<Progress> {
        let v: Vec<u64> = s
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        if v.len() != 8 {
            return None;
        }
        Some(Progress {
            attempted: v[0],
            opened: v[1],
            open_now: v[2],
            failed: v[3],
            disconnected: v[4],
            received: v[5],
            accepted: v[6],
            retries: v[7],
        })
    }
    /// Adds another process's counters.
    pub fn add(&mut self, o: &Progress) {
        self.attempted += o.attempted;
        self.opened += o.opened;
        self.open_now += o.open_now;
        self.failed += o.failed;
        self.disconnected += o.disconnected;
        self.received += o.received;
        self.accepted += o.accepted;
        self.retries += o.retries;
    }
    /// The plain progress line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "attempted {} opened {} open {} failed {} disconnected {}",
            self.attempted, self.opened, self.open_now, self.failed, self.disconnected
        );
        if self.accepted > 0 || self.received > 0 {
            s += &format!(
                " | pushes accepted {} retries {} | received {}",
                self.accepted, self.retries, self.received
            );
        }
        s
    }
}

/// Where progress goes.
pub struct Ticker {
    start: Instant,
    last: Instant,
    bar: Option<ProgressBar>,
    worker: bool,
}

impl Ticker {
    /// Progress toward `target` connections: a bar when stderr is a terminal and this is not
    /// a worker; plain lines once a second otherwise (tests and scripts read those).
    pub fn new(target: u64, worker: bool) -> Ticker {
        let bar = (!worker && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(target), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:30} {pos}/{len} conns {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Ticker {
            start: Instant::now(),
            last: Instant::now(),
            bar,
            worker,
        }
    }

    /// Shows `p` (a bar is updated at once; lines at most once a second).
    pub fn show(&mut self, p: &Progress) {
        if let Some(b) = &self.bar {
            b.set_position(p.opened);
            let mut msg = format!(
                "open {} failed {} lost {}",
                p.open_now, p.failed, p.disconnected
            );
            if p.accepted > 0 || p.received > 0 {
                msg += &format!(" | pushes {} received {}", p.accepted, p.received);
            }
            b.set_message(msg);
            return;
        }
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        if self.worker {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "PROGRESS {}", p.encode());
            let _ = out.flush();
        } else {
            eprintln!("[{:7.1}s] {}", self.start.elapsed().as_secs_f64(), p.line());
        }
    }

    /// Whether updates are throttled by the caller (lines) or cheap (bar).
    pub fn due(&self) -> bool {
        self.bar.is_some() || self.last.elapsed() >= Duration::from_secs(1)
    }

    /// Prints a message without garbling the bar.
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Removes the bar before the summary is printed.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_round_trip() {
        let p = Progress {
            attempted: 1,
            opened: 2,
            open_now: 3,
            failed: 4,
            disconnected: 5,
            received: 6,
            accepted: 7,
            retries: 8,
        };
        assert_eq!(Progress::decode(&p.encode()), Some(p));
        assert_eq!(Progress::decode("1 2 3"), None);
        assert_eq!(Progress::decode("1 2 3 4 5 6 7 x"), None);
    }
}
