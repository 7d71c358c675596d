//! The upstream's side of Throng's push API (`POST /v1/push`, docs/protocol.md 4).

use std::time::Duration;

use serde_json::Value;

/// A push that the server could not take now (503) is retried this many times.
const RETRIES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

pub struct PushApi {
    agent: ureq::Agent,
    push_url: String,
    authorization: String,
}

impl PushApi {
    /// `base` is the API listener's URL, e.g. `http://127.0.0.1:8701`.
    pub fn new(base: &str, api_key: &str) -> PushApi {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            // A refusal's status and body make a better message than ureq's error.
            .http_status_as_error(false)
            .build()
            .new_agent();
        PushApi {
            agent,
            push_url: format!("{}/v1/push", base.trim_end_matches('/')),
            authorization: format!("Bearer {api_key}"),
        }
    }

    /// Sends one push object (`{"topic"|"user": ..., "data": ...}`).
    pub fn push(&self, push: &Value) -> Result<(), String> {
        let body = push.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .agent
                .post(&self.push_url)
                .header("Authorization", &self.authorization)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .map_err(|e| format!("POST {}: {e}", self.push_url))?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(());
            }
            // 503 means nothing was queued (docs/protocol.md 4.6): retrying is safe.
            if status == 503 && attempt <= RETRIES {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
            let text = resp
                .into_body()
                .read_to_string()
                .unwrap_or_else(|e| format!("<unreadable body: {e}>"));
            return Err(format!("POST {} answered {status}: {text}", self.push_url));
        }
    }
}
