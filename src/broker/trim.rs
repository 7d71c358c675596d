//! Trimming `throng:push` (docs/protocol.md 5): an entry stays in Redis until every
//! consumer group on the stream has acknowledged it (and, with `stream_keep_ms`, until it
//! is that old), then goes. Without this the stream grows for as long as producers add to
//! it. One script computes the floor and trims, so a group cannot move between the two.

use std::time::{Duration, Instant};

use redis::Connection;

use super::keys::PUSH_STREAM;

/// KEYS: the push stream. ARGV: keep ms (0: none), most entries to remove in one call.
/// Returns `{removed, floor}`; `floor` is empty when there was nothing to decide on.
///
/// The floor is the lowest of, per group, its oldest pending entry (read, not yet
/// acknowledged) and its last delivered id (everything after it is unread); an entry
/// below every group's floor has been acknowledged by all of them. A stream without a
/// group keeps everything: nothing says what was read. `~` removes only whole radix
/// nodes below the floor, so it never removes more than asked, and `LIMIT` bounds the
/// work of one call.
const SOURCE: &str = r#"
local function below(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {0, ''} end
local floor = nil
for _, g in ipairs(groups) do
  local name, pending, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1]
    elseif g[i] == 'pending' then pending = g[i + 1]
    elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local f = last
  if pending > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], name)[2]
    if oldest and below(oldest, f) then f = oldest end
  end
  if floor == nil or below(f, floor) then floor = f end
end
local keep = tonumber(ARGV[1])
if keep > 0 then
  local t = redis.call('TIME')
  local cut = string.format('%.0f-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - keep)
  if string.sub(cut, 1, 1) == '-' then cut = '0-0' end
  if below(cut, floor) then floor = cut end
end
if floor == '0-0' then return {0, floor} end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', '~', floor, 'LIMIT', ARGV[2])
return {removed, floor}
"#;

/// How often the stream is trimmed when the last trim took all it could.
const EVERY: Duration = Duration::from_secs(1);
/// After Redis refused the script (not the link): an old Redis without `MINID`, or a
/// script error. Retried this much later, so the ingress keeps reading meanwhile.
const AFTER_REFUSAL: Duration = Duration::from_secs(60);
/// Most entries one call removes (Redis's own default for `~`: 100 radix nodes of 100),
/// so a backlog goes in steps that never stall Redis for long.
pub(crate) const LIMIT: u64 = 10_000;

/// What one trim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trimmed {
    /// Entries removed.
    pub removed: u64,
    /// The id below which entries could go (empty: no group, or no stream).
    pub floor: String,
}

/// The trim schedule and its script; owned by the stream ingress thread.
pub(crate) struct Trimmer {
    script: redis::Script,
    keep_ms: u64,
    next: Instant,
}

impl Trimmer {
    /// A trimmer that keeps acknowledged entries `keep` longer; first due at once.
    pub(crate) fn new(keep: Duration) -> Trimmer {
        Trimmer {
            script: redis::Script::new(SOURCE),
            keep_ms: keep.as_millis().min(u128::from(u64::MAX)) as u64,
            next: Instant::now(),
        }
    }

    /// Whether a trim is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Trims once and schedules the next (`next_after`). A refusal by Redis is logged and
    /// retried in `AFTER_REFUSAL`; only a link error is returned, for the ingress to
    /// reconnect.
    pub(crate) fn run(&mut self, conn: &mut Connection) -> redis::RedisResult<Option<Trimmed>> {
        let now = Instant::now();
        let reply: redis::RedisResult<(u64, String)> = self
            .script
            .key(PUSH_STREAM)
            .arg(self.keep_ms)
            .arg(LIMIT)
            .invoke(conn);
        match reply {
            Ok((removed, floor)) => {
                self.next = next_after(now, removed);
                Ok(Some(Trimmed { removed, floor }))
            }
            Err(e) if is_link_error(&e) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "Redis refused to trim {PUSH_STREAM}; trying again in a minute");
                self.next = now + AFTER_REFUSAL;
                Ok(None)
            }
        }
    }
}

/// When to trim next after one that removed `removed` entries at `now`: at once while a
/// backlog remains (`~` stops at a node boundary, so a full call falls short of `LIMIT`),
/// else in `EVERY`.
fn next_after(now: Instant, removed: u64) -> Instant {
    if removed >= LIMIT / 2 {
        now
    } else {
        now + EVERY
    }
}

/// Whether `e` is about the connection rather than the command.
fn is_link_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_first_then_at_once_during_a_backlog_and_a_second_later_otherwise() {
        let mut t = Trimmer::new(Duration::ZERO);
        let now = Instant::now();
        assert!(t.due(now));
        // A call that took about LIMIT (whole radix nodes, so short of it): go on at once.
        t.next = next_after(now, LIMIT - 100);
        assert!(t.due(now));
        // A small trim, or none: the next in EVERY.
        for removed in [0, 100, LIMIT / 2 - 1] {
            t.next = next_after(now, removed);
            assert!(!t.due(now), "{removed}");
            assert!(t.due(now + EVERY), "{removed}");
        }
    }

    #[test]
    fn keep_saturates_instead_of_wrapping() {
        assert_eq!(Trimmer::new(Duration::MAX).keep_ms, u64::MAX);
        assert_eq!(Trimmer::new(Duration::from_secs(3)).keep_ms, 3000);
    }
}
