//! The node's HTTP endpoint: health for load balancers and orchestrators,
//! Prometheus metrics, and a read-only JSON view of the members.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fuddle_storage::Filter;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::convert::matching_members;
use crate::core::Core;
use crate::status::role_name;

/// Serves HTTP on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, core: Arc<Core>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/members", get(members))
        .with_state(core);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!("HTTP server failed: {e}");
    }
}

#[derive(Serialize)]
struct Health {
    /// This node.
    id: u64,
    /// Its Raft role.
    role: &'static str,
    /// The leader it knows of (0: none).
    leader: u64,
    /// Its applied index.
    applied_index: u64,
}

/// 200 while the node knows a leader (it can serve writes and linearizable
/// reads), 503 otherwise, and also when this node leads but has lost its
/// quorum; the body says which node it thinks leads.
async fn health(State(core): State<Arc<Core>>) -> Response {
    let m = core.raft.metrics().borrow().clone();
    let body = Health {
        id: m.id,
        role: role_name(m.state),
        leader: m.current_leader.unwrap_or(0),
        applied_index: core.registry.index(),
    };
    let quorum_lost = m.current_leader == Some(m.id)
        && crate::proposer::quorum_silence(&core.raft, core.config.raft.election_timeout_max)
            .is_some();
    let code = if m.current_leader.is_some() && !quorum_lost {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus text format, written by hand: a dozen gauges do not justify
/// a metrics framework.
async fn metrics(State(core): State<Arc<Core>>) -> String {
    let m = core.raft.metrics().borrow().clone();
    let (members, sessions, subscribers) = {
        let applied = core.registry.read();
        (
            applied.state.members.len(),
            applied.state.sessions.len(),
            applied.feed.receivers(),
        )
    };
    let gauges: [(&str, &str, u64); 8] = [
        ("fuddle_members", "Members in the registry.", members as u64),
        ("fuddle_sessions", "Client sessions.", sessions as u64),
        (
            "fuddle_subscribers",
            "Live subscriptions on this node.",
            subscribers as u64,
        ),
        ("fuddle_raft_term", "Current Raft term.", m.current_term),
        (
            "fuddle_raft_is_leader",
            "1 if this node leads.",
            u64::from(m.state.is_leader()),
        ),
        (
            "fuddle_raft_last_log_index",
            "Last log index.",
            m.last_log_index.unwrap_or(0),
        ),
        (
            "fuddle_raft_applied_index",
            "Last applied index.",
            m.last_applied.map_or(0, |l| l.index),
        ),
        (
            "fuddle_raft_snapshot_index",
            "Index of the last snapshot.",
            m.snapshot.map_or(0, |l| l.index),
        ),
    ];
    let mut out = String::new();
    for gauge in gauges {
        push_metric(&mut out, "gauge", gauge);
    }
    let (unary, session_stream) = core.writes.get();
    let name = "fuddle_writes_received_total";
    out.push_str(&format!(
        "# HELP {name} Writes received from clients, by how they came.\n# TYPE {name} counter\n\
         {name}{{via=\"unary\"}} {unary}\n{name}{{via=\"session_stream\"}} {session_stream}\n"
    ));
    let (kept_back, sent_late) = core.commits.get();
    let applied = core.registry.applied_counts();
    let (spells, _, spun) = core.spin.get();
    for counter in [
        (
            "fuddle_applied_entries_total",
            "Log entries with commands applied since this node started.",
            applied.entries,
        ),
        (
            "fuddle_applied_commands_total",
            "Commands in those entries; divided by fuddle_applied_entries_total, the writes each entry carried.",
            applied.commands,
        ),
        (
            "fuddle_spin_spells_total",
            "Times a worker thread looked for work before sleeping (--spin).",
            spells,
        ),
        (
            "fuddle_raft_commits_kept_back_total",
            "Commit-only AppendEntries this node, as leader, answered itself and kept back for entries to carry.",
            kept_back,
        ),
        (
            "fuddle_raft_commits_sent_late_total",
            "Of those, sent on their own because no entries carried the commit in time.",
            sent_late,
        ),
    ] {
        push_metric(&mut out, "counter", counter);
    }
    let name = "fuddle_spin_seconds_total";
    out.push_str(&format!(
        "# HELP {name} Wall time of spin spells (--spin), tasks run during them included: an upper bound on the CPU spinning cost.\n\
         # TYPE {name} counter\n{name} {:.6}\n",
        spun.as_secs_f64()
    ));
    out
}

/// Appends one metric without labels, of `kind` (`gauge` or `counter`).
fn push_metric(out: &mut String, kind: &str, (name, help, value): (&str, &str, u64)) {
    out.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    ));
}

#[derive(Deserialize)]
struct MembersQuery {
    /// Service pattern.
    #[serde(default)]
    service: String,
    /// Locality pattern.
    #[serde(default)]
    locality: String,
}

#[derive(Serialize)]
struct MembersReply {
    /// The index the answer reflects (this node's state: stale reads).
    index: u64,
    /// The members.
    members: Vec<serde_json::Value>,
}

/// Every matching member from this node's state, in the JSON shape of
/// `fuddle-cli -o json`.
async fn members(
    State(core): State<Arc<Core>>,
    Query(q): Query<MembersQuery>,
) -> Json<MembersReply> {
    let filter = Filter::new(&q.service, &q.locality, &Default::default(), None);
    // Only the matching members are taken under the registry's lock (a
    // reference count each): apply waits for that lock, and with it the
    // Raft runtime's only worker on two cores. JSON is built after.
    let (index, mut matching) = {
        let applied = core.registry.read();
        (applied.index, matching_members(&applied.state, &filter))
    };
    fuddle_storage::members::sort_by_id(&mut matching);
    let members = matching
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.spec.id,
                "service": m.spec.service,
                "locality": m.spec.locality,
                "revision": m.spec.revision,
                "created_ms": m.spec.created_ms,
                "metadata": m.spec.metadata,
                "status": m.status.as_str(),
                "client_id": m.client_id,
                "create_index": m.create_index,
                "mod_index": m.mod_index,
            })
        })
        .collect();
    Json(MembersReply { index, members })
}
