//! JSON output: one document per command, one object per line for
//! `watch`. Members use the design's field names (the SDK's `Member`
//! serializes that way).

use std::io::{self, Write};

use fuddle_client::{Change, ClusterStatus, Event, Member, NodeInfo, NodeStatus};
use serde::Serialize;

use super::Printer;

pub struct Json;

/// Writes one compact JSON value and a newline.
fn line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

impl Printer for Json {
    fn members(&self, out: &mut dyn Write, members: &[Member], index: u64) -> io::Result<()> {
        line(out, &List { index, members })
    }

    fn member(&self, out: &mut dyn Write, member: &Member) -> io::Result<()> {
        line(out, member)
    }

    fn registered(
        &self,
        out: &mut dyn Write,
        _note: &mut dyn Write,
        member: &Member,
        _client_id: &str,
    ) -> io::Result<()> {
        line(out, member)
    }

    fn unregistered(&self, out: &mut dyn Write, id: &str, index: u64) -> io::Result<()> {
        line(out, &Unregistered { id, index })
    }

    fn cluster_status(&self, out: &mut dyn Write, status: &ClusterStatus) -> io::Result<()> {
        line(
            out,
            &Cluster {
                leader: status.leader,
                term: status.term,
                nodes: &status.nodes,
            },
        )
    }

    fn node_status(&self, out: &mut dyn Write, status: &NodeStatus) -> io::Result<()> {
        line(out, status)
    }

    fn event(&self, out: &mut dyn Write, event: &Event) -> io::Result<()> {
        line(out, &EventLine::from(event))
    }
}

// The documents below are structs rather than `json!` values so that the
// keys come out in the documented order (`json!` sorts them).

#[derive(Serialize)]
struct List<'a> {
    index: u64,
    members: &'a [Member],
}

#[derive(Serialize)]
struct Unregistered<'a> {
    id: &'a str,
    index: u64,
}

#[derive(Serialize)]
struct Cluster<'a> {
    leader: u64,
    term: u64,
    nodes: &'a [NodeInfo],
}

/// One line of `members watch -o json`, tagged with its `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum EventLine<'a> {
    Snapshot {
        index: u64,
        members: &'a [Member],
    },
    Changes {
        index: u64,
        changes: Vec<ChangeJson<'a>>,
    },
    Progress {
        index: u64,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ChangeJson<'a> {
    Upsert { member: &'a Member },
    Removed { id: &'a str },
}

impl<'a> From<&'a Event> for EventLine<'a> {
    fn from(event: &'a Event) -> Self {
        match event {
            Event::Snapshot { members, index } => EventLine::Snapshot {
                index: *index,
                members,
            },
            Event::Changes { index, changes } => EventLine::Changes {
                index: *index,
                changes: changes
                    .iter()
                    .map(|change| match change {
                        Change::Upsert(member) => ChangeJson::Upsert { member },
                        Change::Removed(id) => ChangeJson::Removed { id },
                    })
                    .collect(),
            },
            Event::Progress { index } => EventLine::Progress { index: *index },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fuddle_client::MemberStatus;
    use serde_json::{Value, json};

    use super::*;

    fn member() -> Member {
        Member {
            id: "web-1".into(),
            service: "web".into(),
            locality: "eu".into(),
            revision: "v1".into(),
            created_ms: 5,
            metadata: BTreeMap::from([("port".into(), "80".into())]),
            status: MemberStatus::Up,
            client_id: "c1".into(),
            create_index: 3,
            mod_index: 4,
        }
    }

    fn printed(print: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> Vec<Value> {
        let mut out = Vec::new();
        print(&mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn list_is_one_document_with_index_and_members() {
        let docs = printed(|out| Json.members(out, &[member()], 9));
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["index"], 9);
        assert_eq!(docs[0]["members"][0]["id"], "web-1");
        assert_eq!(docs[0]["members"][0]["status"], "up");
        assert_eq!(docs[0]["members"][0]["mod_index"], 4);
    }

    #[test]
    fn events_are_tagged_one_per_line() {
        let docs = printed(|out| {
            Json.event(
                out,
                &Event::Snapshot {
                    members: vec![member()],
                    index: 4,
                },
            )?;
            Json.event(
                out,
                &Event::Changes {
                    index: 5,
                    changes: vec![Change::Upsert(member()), Change::Removed("x".into())],
                },
            )?;
            Json.event(out, &Event::Progress { index: 6 })
        });
        assert_eq!(
            docs[0],
            json!({ "type": "snapshot", "index": 4, "members": [serde_json::to_value(member()).unwrap()] })
        );
        assert_eq!(docs[1]["type"], "changes");
        assert_eq!(docs[1]["changes"][0]["type"], "upsert");
        assert_eq!(docs[1]["changes"][0]["member"]["id"], "web-1");
        assert_eq!(
            docs[1]["changes"][1],
            json!({ "type": "removed", "id": "x" })
        );
        assert_eq!(docs[2], json!({ "type": "progress", "index": 6 }));
    }

    #[test]
    fn keys_come_in_the_documented_order() {
        let mut out = Vec::new();
        Json.event(&mut out, &Event::Progress { index: 6 }).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"progress\",\"index\":6}\n"
        );
        let mut out = Vec::new();
        let status = ClusterStatus {
            leader: 1,
            term: 2,
            nodes: Vec::new(),
            answered_by: 1,
        };
        Json.cluster_status(&mut out, &status).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"leader\":1,\"term\":2,\"nodes\":[]}\n"
        );
    }

    #[test]
    fn cluster_status_has_the_contract_fields() {
        let status = ClusterStatus {
            leader: 1,
            term: 2,
            nodes: vec![NodeInfo {
                id: 1,
                addr: "a:1".into(),
                role: "leader".into(),
                voter: true,
                ..Default::default()
            }],
            answered_by: 1,
        };
        let docs = printed(|out| Json.cluster_status(out, &status));
        assert_eq!(docs[0]["leader"], 1);
        assert_eq!(docs[0]["term"], 2);
        let node = &docs[0]["nodes"][0];
        for field in [
            "id",
            "addr",
            "http_addr",
            "role",
            "voter",
            "last_log_index",
            "applied_index",
            "liveness",
        ] {
            assert!(node.get(field).is_some(), "missing {field}");
        }
    }

    #[test]
    fn node_status_is_flat_with_id() {
        let status = NodeStatus {
            node: NodeInfo {
                id: 7,
                ..Default::default()
            },
            uptime_ms: 3,
            ..Default::default()
        };
        let docs = printed(|out| Json.node_status(out, &status));
        assert_eq!(docs[0]["id"], 7);
        assert_eq!(docs[0]["uptime_ms"], 3);
        assert!(docs[0].get("node").is_none());
    }
}
