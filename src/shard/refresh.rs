//! Token refresh while connected (docs/protocol.md 2.1, 2.2): the `token_expiring` hint
//! ahead of the 4001 close, and `refresh`, which swaps in a new token of the same user.

use crate::messages::{self, Refused};
use crate::reactor::TICK_MS;
use crate::topic;

use super::conn::{EXPIRING_SENT, PARKED};
use super::Shard;

/// How much earlier than the current expiry a refreshed one may come out and still count
/// as "not earlier". The connection keeps its expiry only as a tick (the slot has no room
/// for `exp`), computed from the wall clock's whole second, so the same `exp` seen a
/// moment later can land up to a second (plus a stale turn tick) earlier. The rule thus
/// holds to about a second, which is all it needs: it stops the replay of an older token.
const SAME_EXP_TICKS: u32 = (1100 / TICK_MS) as u32;
/// What a signature check costs a `refresh`, as text: a token (`rate`).
const CHECK_BYTES: usize = super::rate::BYTES_PER_TOKEN as usize;

impl Shard {
    /// Sends `token_expiring` once per token when the 4001 close is `refresh_ahead` away
    /// or nearer (after a refresh, no sooner than when half of what the new token had is
    /// left); `in_ms` is the time left until that close (`exp` plus the JWT leeway).
    pub(super) fn hint_expiry(&mut self, key: u32) {
        let tick = self.tick;
        let lead = self.conns.hint_lead(key, self.hint_ticks);
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        // `refresh_ahead` 0: no hint (one at the 4001 itself would be useless). A session
        // waiting for its stream gets it once welcomed (nothing goes before `welcome`).
        if self.hint_ticks == 0
            || c.closing()
            || c.flags & PARKED != 0
            || c.expires == u32::MAX
            || c.flags & EXPIRING_SENT != 0
            || tick < c.expires.saturating_sub(lead)
        {
            return;
        }
        c.flags |= EXPIRING_SENT;
        let in_ms = u64::from(c.expires.saturating_sub(tick)) * TICK_MS;
        self.conns.set_hint_lead(key, None);
        self.send_frame(key, messages::token_expiring_frame(in_ms));
    }

    /// Handles `refresh`: verifies the token, then moves the expiry, replaces the grants,
    /// drops subscriptions they no longer allow and answers `refreshed`. A refused token
    /// changes nothing: the connection keeps its old token, expiry and grants.
    pub(super) fn refresh(
        &mut self,
        key: u32,
        token: &str,
        reference: Option<&str>,
    ) -> Result<(), Refused> {
        let Some(verifier) = self.verifier.as_ref() else {
            return Err(Refused {
                code: "invalid_token",
                message: "this server cannot verify tokens at the moment".into(),
            });
        };
        // A token per signature check, on top of the message's: a refresh costs its
        // verification, not its few bytes (review s20b: a token without a `kid` is tried
        // against every key).
        let mut checks = 0;
        let verified = verifier.verify_counting(token, &mut checks);
        if checks > 0 {
            self.rates
                .charge_bytes(key, self.tick, checks.saturating_mul(CHECK_BYTES));
        }
        let identity = verified.map_err(|e| Refused {
            code: e.code(),
            message: e.to_string(),
        })?;
        let Some(c) = self.conns.get(key) else {
            return Ok(());
        };
        let current = self.users.get(c.user).map(|u| &*u.id);
        if current != Some(&*identity.user) {
            return Err(Refused {
                code: "wrong_user",
                message: format!(
                    "the token is for user {:?}, this connection is user {:?}",
                    &*identity.user,
                    current.unwrap_or_default()
                ),
            });
        }
        let expires = identity.exp.map_or(u32::MAX, |e| self.expiry_tick(e));
        if expires.saturating_add(SAME_EXP_TICKS) < c.expires {
            return Err(Refused {
                code: "invalid_token",
                message: "the new token expires before the current one".into(),
            });
        }
        // A new token gets its hint `refresh_ahead` before its end, but never before half
        // of what it has left: a client that refreshes on every hint, with tokens that
        // live little longer than `refresh_ahead` (the JWT leeway included), would
        // otherwise refresh again at once, in a loop.
        let left = expires.saturating_sub(self.tick);
        let short = self.hint_ticks > 0 && expires != u32::MAX && left / 2 < self.hint_ticks;
        self.conns.set_hint_lead(key, short.then_some(left / 2));
        if let Some(c) = self.conns.get_mut(key) {
            c.expires = expires;
            // The new token gets its own hint.
            c.flags &= !EXPIRING_SENT;
            // Armed again below for the new expiry (and, while draining, the turn).
            self.wheel.cancel(&mut self.conns, key);
        }
        let grant = self.grants.intern(identity.topics, identity.publish);
        if let Some(c) = self.conns.get_mut(key) {
            let old = std::mem::replace(&mut c.grant, grant);
            self.grants.release(old);
        } else {
            self.grants.release(grant);
        }
        self.drop_forbidden(key);
        self.send_frame(key, messages::refreshed_frame(identity.exp, reference));
        self.hint_expiry(key);
        if self.conns.get(key).is_some_and(|c| !c.place.is_linked()) {
            self.arm(key);
        }
        Ok(())
    }

    /// Leaves every topic that neither the connection's grants nor `public_topics` allow
    /// any longer, telling the client with `unsubscribed` and `"reason":"forbidden"`.
    fn drop_forbidden(&mut self, key: u32) {
        let Some(grant) = self.conns.get(key).map(|c| c.grant) else {
            return;
        };
        let mut subscribed = self.conns.take_topics(key);
        let public = &self.shared.config.public_topics;
        let grants = self.grants.get(grant);
        let mut dropped = Vec::new();
        subscribed.retain(|&t| {
            let Some(name) = self.topics.name(t) else {
                return true;
            };
            let allowed =
                topic::allowed(public, name) || grants.is_some_and(|g| topic::allowed(g, name));
            if !allowed {
                dropped.push((
                    t,
                    name.to_string(),
                    messages::dropped_topic_frame(name, "forbidden"),
                ));
            }
            allowed
        });
        self.conns.set_topics(key, subscribed);
        let user = self.conns.get(key).map(|c| c.user);
        for (t, name, frame) in dropped {
            match user {
                Some(user) => self.leave_topic(t, key, user),
                None => self.topics.leave(t, key),
            }
            self.send_frame(key, frame);
            self.lifecycle(key, "unsubscribe", crate::events::Detail::Topic(&name));
        }
    }
}
