//! Clients publishing to topics (docs/protocol.md 6): the shard checks the topic, the
//! permission and the size, and hands the publish to the push API, which numbers it in the
//! topic's stream and fans it out like any topic push; its answer comes back here as
//! `published` or `error` for the session that asked.

use std::sync::atomic::Ordering::Relaxed;

use crossbeam_channel::TrySendError;

use crate::command::{ClientPublish, Origin, PublishOutcome, PUBLISH_IN_FLIGHT};
use crate::messages::{self, Refused};
use crate::topic;

use super::Shard;

impl Shard {
    /// A client's `publish`: refused here when the topic is invalid or not allowed, `data`
    /// is too large, or too many publishes of this shard wait; else sent to the push API.
    pub(super) fn publish(
        &mut self,
        key: u32,
        name: &str,
        data: String,
        reference: Option<&str>,
    ) -> Result<(), Refused> {
        topic::validate(name).map_err(|e| super::inbound::bad_topic(&e))?;
        let Some(c) = self.conns.get(key) else {
            return Ok(());
        };
        let cfg = &self.shared.config;
        let granted = topic::allowed(&cfg.public_publish, name)
            || self
                .grants
                .publish(c.grant)
                .is_some_and(|p| topic::allowed(p, name));
        if !granted {
            return Err(Refused {
                code: "forbidden_topic",
                message: format!("not allowed to publish to {name:?}"),
            });
        }
        if data.len() > cfg.max_client_data_bytes {
            return Err(Refused {
                code: "too_large",
                message: format!(
                    "data is {} bytes; a publish carries at most {} (max_client_data_bytes)",
                    data.len(),
                    cfg.max_client_data_bytes
                ),
            });
        }
        let overloaded = || Refused {
            code: "overloaded",
            message: "too many publishes are waiting on this server; retry shortly".into(),
        };
        if self.publishing >= PUBLISH_IN_FLIGHT {
            return Err(overloaded());
        }
        let Some(from) = self
            .users
            .get(c.user)
            .map(|u| Box::<str>::from(u.id.as_str()))
        else {
            return Ok(());
        };
        let origin = Origin {
            shard: self.id,
            conn: key,
            session: c.stamp.session,
            reference: reference.map(Into::into),
        };
        let msg = ClientPublish {
            origin,
            topic: name.into(),
            from,
            data: data.into_boxed_str(),
        };
        match self.shared.publishes.try_send(msg) {
            Ok(()) => {
                self.publishing += 1;
                self.wake_api = true;
                Ok(())
            }
            // Full cannot happen while every shard keeps its in-flight bound; Disconnected
            // means the API has stopped (shutdown).
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(overloaded()),
        }
    }

    /// The push API's answer to one of this shard's publishes: `published` with its `seq`,
    /// or the `error`, for the session that asked, if it is still there.
    pub(super) fn published(&mut self, origin: Origin, topic: &str, outcome: PublishOutcome) {
        self.publishing = self.publishing.saturating_sub(1);
        let alive = self
            .conns
            .get(origin.conn)
            .is_some_and(|c| c.stamp.session == origin.session && !c.closing());
        if !alive {
            return;
        }
        let reference = origin.reference.as_deref();
        let frame = match outcome {
            Ok(seq) => {
                self.counters().client_publishes.fetch_add(1, Relaxed);
                messages::published_frame(topic, seq, reference)
            }
            Err((code, message)) => messages::error_frame(&Refused { code, message }, reference),
        };
        self.send_frame(origin.conn, frame);
    }
}
