//! The plan of a chat run: which rooms and members this process has, and who publishes
//! how many messages when.

use crate::cli::ChatArgs;
use crate::client::DialCfg;

/// The part of `total` things spread evenly over `n` slots (the first `total mod n` slots
/// get one more) that falls on slots `start..start + len`.
pub fn share(total: u64, n: u64, start: u64, len: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let extra = total % n;
    let end = start.saturating_add(len).min(n);
    let start = start.min(end);
    (total / n) * (end - start) + extra.min(end) - extra.min(start)
}

/// How the members of one process publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Messages per second per member.
    pub rate: f64,
    /// Seconds the members publish for; 0: until their share of `count` is sent.
    pub duration: f64,
    /// Messages in all (spread over the members), if bounded by count.
    pub count: Option<u64>,
    /// Members of this process.
    pub members: u64,
}

impl Pace {
    /// The pace of all `a`'s members.
    pub fn of(a: &ChatArgs) -> Pace {
        Pace {
            rate: a.rate_per_member(),
            duration: a.duration_secs.max(0.0),
            count: a.count,
            members: a.connections(),
        }
    }

    /// Seconds after the start when member `g`'s first message is due: the members are
    /// spread evenly over one period, so the room's traffic is steady, not in bursts.
    pub fn offset_secs(&self, g: u64) -> f64 {
        g as f64 / self.members.max(1) as f64 / self.rate
    }

    /// Seconds after the start when member `g`'s message `k` (from 0) is due.
    pub fn due_secs(&self, g: u64, k: u64) -> f64 {
        self.offset_secs(g) + k as f64 / self.rate
    }

    /// How many messages member `g` publishes: those due within the duration, at most its
    /// share of the count.
    pub fn quota(&self, g: u64) -> u64 {
        let by_count = self.count.map(|c| share(c, self.members, g, 1));
        if self.duration <= 0.0 {
            return by_count.unwrap_or(0);
        }
        let left = self.duration - self.offset_secs(g);
        // The epsilon keeps a product that is whole in decimal (2 s at 2/s) from rounding up.
        let by_time = if left > 0.0 {
            (left * self.rate - 1e-9).ceil().max(0.0) as u64
        } else {
            0
        };
        by_count.map_or(by_time, |c| c.min(by_time))
    }

    /// Seconds from the start to the last planned message.
    pub fn span_secs(&self) -> f64 {
        (0..self.members)
            .filter_map(|g| {
                let q = self.quota(g);
                (q > 0).then(|| self.due_secs(g, q - 1))
            })
            .fold(0.0, f64::max)
    }
}

/// The rooms of one process, their members and their names.
#[derive(Debug, Clone)]
pub struct Rooms {
    /// Rooms of this process.
    pub count: u64,
    /// Members per room; member m of room r is member number r * members + m.
    pub members: u64,
    /// Room r is the topic `{prefix}{offset + r}`.
    pub prefix: String,
    /// The number of this process's first room.
    pub offset: u64,
    /// Member number g is user `u{user_offset + g}`.
    pub user_offset: u64,
}

impl Rooms {
    /// Members of this process.
    pub fn connections(&self) -> u64 {
        self.count * self.members
    }

    /// The topic of room `r`.
    pub fn topic(&self, r: u64) -> String {
        format!("{}{}", self.prefix, self.offset + r)
    }

    /// The user number of member number `g`.
    pub fn user(&self, g: u64) -> u64 {
        self.user_offset + g
    }
}

/// What the event loops of one process do.
#[derive(Debug, Clone)]
pub struct ChatCfg {
    /// How they open and close the members' connections (member g is connection g).
    pub dial: DialCfg,
    /// Who is in which room.
    pub rooms: Rooms,
    /// The rooms' topic pattern `<prefix>*`: the tokens' `topics` claim, and their
    /// `publish` claim with `publish_claim`.
    pub grant: Vec<String>,
    /// Whether the tokens carry the `publish` claim.
    pub publish_claim: bool,
    /// Who publishes how many messages when.
    pub pace: Pace,
    /// The `pad` string of every message.
    pub pad: String,
}

impl ChatCfg {
    /// The configuration of this process from its flags.
    pub fn from_args(a: &ChatArgs) -> Result<ChatCfg, String> {
        Ok(ChatCfg {
            // Each event loop takes whole rooms.
            dial: DialCfg::from_args(&a.url, &a.jwt_secret, &a.sock, a.rooms, a.connections())?,
            rooms: Rooms {
                count: a.rooms,
                members: a.members,
                prefix: a.room_prefix.clone(),
                offset: a.room_offset,
                user_offset: a.user_offset,
            },
            grant: vec![format!("{}*", a.room_prefix)],
            publish_claim: !a.no_publish_claim,
            pace: Pace::of(a),
            pad: "x".repeat(a.payload_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_whole_and_add_up() {
        assert_eq!(share(10, 3, 0, 1), 4);
        assert_eq!(share(10, 3, 1, 1), 3);
        assert_eq!(share(10, 3, 2, 1), 3);
        assert_eq!(share(10, 3, 0, 3), 10);
        assert_eq!(share(10, 3, 1, 2), 6);
        assert_eq!(share(10, 3, 2, 5), 3, "past the end is nothing");
        assert_eq!(share(2, 5, 3, 2), 0);
        assert_eq!(share(7, 0, 0, 1), 0);
        let total: u64 = (0..7).map(|g| share(100, 7, g, 1)).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn pace_spreads_members_over_one_period() {
        let p = Pace {
            rate: 2.0,
            duration: 2.0,
            count: None,
            members: 4,
        };
        assert_eq!(p.offset_secs(0), 0.0);
        assert_eq!(p.offset_secs(2), 0.25);
        assert_eq!(p.due_secs(2, 3), 1.75);
        for g in 0..4 {
            assert_eq!(p.quota(g), 4, "member {g}: every 0.5 s within 2 s");
        }
        assert_eq!((0..4).map(|g| p.quota(g)).sum::<u64>(), 16);
        assert!((p.span_secs() - (0.375 + 1.5)).abs() < 1e-9);
        let counted = Pace {
            count: Some(5),
            ..p
        };
        assert_eq!(
            (0..4).map(|g| counted.quota(g)).collect::<Vec<_>>(),
            vec![2, 1, 1, 1]
        );
        let count_only = Pace {
            duration: 0.0,
            count: Some(9),
            ..p
        };
        assert_eq!((0..4).map(|g| count_only.quota(g)).sum::<u64>(), 9);
        // Slower than one message per duration: only the members due within it publish.
        let slow = Pace {
            rate: 0.1,
            duration: 5.0,
            count: None,
            members: 4,
        };
        assert_eq!(
            (0..4).map(|g| slow.quota(g)).collect::<Vec<_>>(),
            vec![1, 1, 0, 0],
            "members due at 0 s and 2.5 s publish once, those at 5 s and 7.5 s never"
        );
    }
}
