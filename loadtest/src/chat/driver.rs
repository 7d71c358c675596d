//! The driver of one chat process: it starts the event loops, waits for the members to
//! join, says go, waits for the publishes and their deliveries, and closes.

use super::event_loop;
use super::measurements::ChatOut;
use super::plan::ChatCfg;
use super::shared::ChatShared;
use crate::cli::{secs, ChatArgs};
use crate::client::PHASE_CLOSE;
use crate::local::join_all;
use crate::progress::Ticker;
use crate::report::Report;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The event loops of this process and what drives them.
pub struct Local {
    /// What the loops do.
    pub cfg: Arc<ChatCfg>,
    /// What they share with the driver.
    pub sh: Arc<ChatShared>,
    handles: Vec<JoinHandle<ChatOut>>,
    /// The progress bar (or a worker's `PROGRESS` lines).
    pub ticker: Ticker,
}

impl Local {
    /// Starts the event loops of `a`'s rooms; they connect at once.
    pub fn start(a: &ChatArgs) -> Result<Local, String> {
        let cfg = Arc::new(ChatCfg::from_args(a)?);
        crate::local::check_nofile(cfg.rooms.connections(), 0, cfg.dial.threads as u64)?;
        let sh = Arc::new(ChatShared::new());
        let handles = event_loop::spawn(cfg.clone(), sh.clone())?;
        Ok(Local {
            ticker: Ticker::new(cfg.rooms.connections(), a.worker),
            cfg,
            sh,
            handles,
        })
    }

    /// Shows progress (bar, line once a second, or a worker's `PROGRESS` line).
    pub fn tick(&mut self) {
        if self.ticker.due() {
            let p = self.sh.conns.progress(self.sh.published.load(Relaxed), 0);
            self.ticker.show(&p);
        }
    }

    /// Waits while `busy` holds, at most until `deadline`, ticking.
    fn wait_while(&mut self, deadline: Instant, busy: impl Fn(&ChatShared) -> bool) {
        while Instant::now() < deadline && busy(&self.sh) {
            std::thread::sleep(Duration::from_millis(20));
            self.tick();
        }
    }

    /// Waits until every member has joined its room or never will (bounded by the
    /// pacing, the handshake timeout and 10 s for the subscriptions).
    pub fn wait_joined(&mut self) {
        let n = self.cfg.rooms.connections();
        let deadline = Instant::now() + self.cfg.dial.connect_bound(n) + Duration::from_secs(10);
        let threads = self.cfg.dial.threads as u64;
        self.wait_while(deadline, |s| {
            s.settled.load(Relaxed) < n && s.conns.threads_done.load(Relaxed) < threads
        });
    }

    /// Starts publishing at `at`.
    pub fn go(&self, at: Instant) {
        let us = at
            .saturating_duration_since(self.sh.conns.start)
            .as_micros() as u64;
        self.sh.go_us.store(us.max(1), Relaxed);
    }

    /// Waits until every event loop has sent its schedule (bounded by its span plus 10 s).
    pub fn wait_sent(&mut self, at: Instant) {
        let deadline = at + secs(self.cfg.pace.span_secs()) + Duration::from_secs(10);
        let threads = self.cfg.dial.threads;
        self.wait_while(deadline, |s| s.loops_sent.load(Relaxed) < threads);
    }

    /// Waits until every publish is answered and every member has every accepted
    /// message, or `max`.
    pub fn drain(&mut self, max: Duration) {
        let members = self.cfg.rooms.members;
        self.wait_while(Instant::now() + max, |s| {
            let answered = s.published.load(Relaxed) + s.refused.load(Relaxed);
            answered < s.sent.load(Relaxed)
                || s.delivered.load(Relaxed) < s.published.load(Relaxed) * members
        });
    }

    /// Closes every connection and builds this process's report; `raw` keeps the
    /// histograms for a parent to merge.
    pub fn close(self, raw: bool) -> Report {
        self.ticker.finish();
        self.sh.conns.phase.store(PHASE_CLOSE, Relaxed);
        let out = join_all(self.handles, ChatOut::new(), ChatOut::merge, |o| {
            &mut o.conns
        });
        out.report(&self.cfg, &self.sh, raw)
    }
}
