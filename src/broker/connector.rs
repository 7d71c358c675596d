//! How every Redis link connects: the URL with its TLS material (`redis_ca`, the client
//! certificate of `redis_client_cert`), which `SIGHUP` reads again. Links open after a
//! reload use the new files; open links keep the handshake they made.

use std::sync::{Arc, RwLock};

use crate::config::{ClusterConfig, RedisCa};

/// What one connect uses: redis-rs's client and the pub/sub link's TLS configuration.
pub(crate) struct Dial {
    /// redis-rs's client, for the command links.
    pub client: redis::Client,
    /// The pub/sub link's TLS over `rediss://` (the other links' is redis-rs's own).
    pub link_tls: Option<Arc<rustls::ClientConfig>>,
}

/// The Redis connection settings every broker thread (and the events thread) shares.
pub struct RedisConnector {
    url: String,
    /// The files read again on `SIGHUP`, when any.
    ca_path: Option<std::path::PathBuf>,
    identity_files: Option<crate::tls::TlsFiles>,
    current: RwLock<Arc<Dial>>,
}

impl RedisConnector {
    /// The connector for `cluster`, from the files as the configuration read them.
    pub fn new(cluster: &ClusterConfig) -> Result<RedisConnector, String> {
        let dial = dial(
            &cluster.redis_url,
            cluster.redis_ca.as_ref(),
            cluster.redis_identity.as_ref().map(|i| &i.identity),
        )?;
        Ok(RedisConnector {
            url: cluster.redis_url.clone(),
            ca_path: cluster.redis_ca.as_ref().map(|c| c.path.clone()),
            identity_files: cluster.redis_identity.as_ref().map(|i| i.files.clone()),
            current: RwLock::new(Arc::new(dial)),
        })
    }

    /// What the next connect uses.
    pub(crate) fn dial(&self) -> Arc<Dial> {
        match self.current.read() {
            Ok(cur) => Arc::clone(&cur),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Whether the links speak TLS (`rediss://`).
    pub(crate) fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// A redis-rs error as the log tells it (`broker::describe`).
    pub(crate) fn describe(&self, e: &redis::RedisError) -> String {
        let mut s = super::describe(e, self.is_tls());
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            // redis-rs drops Redis's reason; the pub/sub link's own AUTH keeps it.
            let dial = self.dial();
            if let Err(why) = super::pubsub::PubSubLink::open(&dial.client, dial.link_tls.as_ref())
            {
                s = format!("{s}: Redis said {why}");
            }
        }
        s
    }

    /// Opens a command link with the broker's timeouts.
    pub(crate) fn connect(&self) -> redis::RedisResult<redis::Connection> {
        super::connect(&self.dial().client)
    }

    /// Reads `redis_ca` and the client certificate and key again (`SIGHUP`): links opened
    /// after it use them. `None` when neither is set; on error the files in use stay.
    pub fn reload(&self) -> Option<Result<(), String>> {
        if self.ca_path.is_none() && self.identity_files.is_none() {
            return None;
        }
        let ca = match &self.ca_path {
            None => None,
            Some(path) => match crate::tls::read_pem_file(path) {
                Ok((pem, certs)) => Some(RedisCa {
                    path: path.clone(),
                    pem,
                    certs,
                }),
                Err(e) => return Some(Err(format!("redis_ca {}: {e}", path.display()))),
            },
        };
        let identity = match &self.identity_files {
            None => None,
            Some(files) => {
                let provider = rustls::crypto::ring::default_provider();
                match crate::tls::Identity::read(files, &provider) {
                    Ok(identity) => Some(identity),
                    Err(e) => return Some(Err(format!("redis_client_cert: {e}"))),
                }
            }
        };
        Some(dial(&self.url, ca.as_ref(), identity.as_ref()).map(|dial| {
            match self.current.write() {
                Ok(mut cur) => *cur = Arc::new(dial),
                // A panic while holding the lock cannot leave the Arc half-written.
                Err(poisoned) => *poisoned.into_inner() = Arc::new(dial),
            }
        }))
    }
}

/// Builds both clients from the URL and the TLS material.
fn dial(
    url: &str,
    ca: Option<&RedisCa>,
    identity: Option<&crate::tls::Identity>,
) -> Result<Dial, String> {
    let client = if ca.is_none() && identity.is_none() {
        redis::Client::open(url)
    } else {
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: identity.map(|i| redis::ClientTlsConfig {
                    client_cert: i.cert_pem.clone(),
                    client_key: i.key_pem.clone(),
                }),
                root_cert: ca.map(|ca| ca.pem.clone()),
            },
        )
    }
    .map_err(|e| e.to_string())?;
    let link_tls = super::pubsub::tls_config(url, ca, identity)?;
    Ok(Dial { client, link_tls })
}
