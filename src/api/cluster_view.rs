//! Cluster mode: presence and stats across nodes (docs/protocol.md 5). This node's part
//! comes from its shards (exact, now); the other live nodes' from what the presence
//! thread read in Redis (at most ~100 ms behind for sessions, one heartbeat for totals).

use crate::broker::{ClusterView, NodeSessions, ViewResult};
use crate::command::SessionDetail;

/// The `GET /v1/presence/<user>` body: sessions on every live node, `details` of the
/// local ones, and `nodes` (in cluster mode) with each node's count.
pub(super) fn presence_body(
    user: &str,
    local: u64,
    details: &[SessionDetail],
    cluster: Option<(&str, Vec<NodeSessions>)>,
) -> serde_json::Value {
    let details: Vec<serde_json::Value> = details
        .iter()
        .map(|d| {
            serde_json::json!({
                "session": d.session,
                "acked": d.acked,
                "connected_ms": d.connected_ms,
            })
        })
        .collect();
    let Some((me, mut others)) = cluster else {
        return serde_json::json!({
            "user": user,
            "online": local > 0,
            "sessions": local,
            "details": details,
        });
    };
    others.retain(|n| n.node != me);
    if local > 0 {
        others.push(NodeSessions {
            node: me.to_string(),
            sessions: local,
        });
    }
    others.sort_unstable_by(|a, b| a.node.cmp(&b.node));
    let total: u64 = others.iter().map(|n| n.sessions).sum();
    let nodes: Vec<serde_json::Value> = others
        .iter()
        .map(|n| serde_json::json!({"node": n.node, "sessions": n.sessions}))
        .collect();
    serde_json::json!({
        "user": user,
        "online": total > 0,
        "sessions": total,
        "details": details,
        "nodes": nodes,
    })
}

/// Adds the cluster's view to `/v1/stats`'s `cluster` object: `nodes` (live node ids,
/// this one included), `connections` and `users_online` summed over them, and
/// `node_totals` per node; with `view_error` and nulls when Redis could not be read.
pub(super) fn add_to_stats(stats: &mut serde_json::Value, me: &str, view: ViewResult) {
    let local = (
        stats_u64(stats.get("connections")),
        stats_u64(stats.get("users_online")),
    );
    let Some(obj) = stats
        .get_mut("cluster")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    let others = match view {
        Ok(ClusterView::Stats(others)) => others,
        Ok(ClusterView::User(_) | ClusterView::Topic { .. }) => {
            view_error(obj, "unexpected answer from the presence thread");
            return;
        }
        Err(e) => {
            view_error(obj, &e);
            return;
        }
    };
    let mut rows: Vec<(String, u64, u64)> = others
        .into_iter()
        .filter(|n| n.node != me)
        .map(|n| (n.node, n.connections, n.users_online))
        .collect();
    rows.push((me.to_string(), local.0, local.1));
    rows.sort_unstable();
    let nodes: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let connections: u64 = rows.iter().map(|r| r.1).sum();
    let users: u64 = rows.iter().map(|r| r.2).sum();
    let per_node: Vec<serde_json::Value> = rows
        .iter()
        .map(|(node, c, u)| serde_json::json!({"node": node, "connections": c, "users_online": u}))
        .collect();
    obj.insert("nodes".into(), serde_json::json!(nodes));
    obj.insert("connections".into(), connections.into());
    obj.insert("users_online".into(), users.into());
    obj.insert("node_totals".into(), per_node.into());
}

fn stats_u64(v: Option<&serde_json::Value>) -> u64 {
    v.and_then(serde_json::Value::as_u64).unwrap_or(0)
}

fn view_error(obj: &mut serde_json::Map<String, serde_json::Value>, e: &str) {
    for k in ["nodes", "connections", "users_online", "node_totals"] {
        obj.insert(k.into(), serde_json::Value::Null);
    }
    obj.insert(
        "view_error".into(),
        format!("cannot read the cluster's view from Redis: {e}").into(),
    );
}
