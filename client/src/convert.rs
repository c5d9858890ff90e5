//! Conversions between the SDK's types and the generated protocol types.
//! They live apart from both so that neither the domain types nor the
//! generated code need to know about the other.

use fuddle_proto::registry as proto;

use crate::cluster::{ClusterStatus, NodeInfo, NodeStatus};
use crate::error::Error;
use crate::event::{Change, Event};
use crate::filter::{Consistency, Filter};
use crate::member::{Member, MemberSpec, MemberStatus};

impl From<MemberStatus> for proto::MemberStatus {
    fn from(status: MemberStatus) -> Self {
        match status {
            MemberStatus::Up => proto::MemberStatus::Up,
            MemberStatus::Down => proto::MemberStatus::Down,
        }
    }
}

/// Reads a status off the wire. Anything but `UP` counts as down: a member
/// whose status is unknown should not be sent traffic.
fn status_from_wire(value: i32) -> MemberStatus {
    match proto::MemberStatus::try_from(value) {
        Ok(proto::MemberStatus::Up) => MemberStatus::Up,
        _ => MemberStatus::Down,
    }
}

impl From<proto::Member> for Member {
    fn from(m: proto::Member) -> Self {
        Self {
            id: m.id,
            service: m.service,
            locality: m.locality,
            revision: m.revision,
            created_ms: m.created_ms,
            metadata: m.metadata,
            status: status_from_wire(m.status),
            client_id: m.client_id,
            create_index: m.create_index,
            mod_index: m.mod_index,
        }
    }
}

impl From<Member> for proto::Member {
    fn from(m: Member) -> Self {
        Self {
            id: m.id,
            service: m.service,
            locality: m.locality,
            revision: m.revision,
            created_ms: m.created_ms,
            metadata: m.metadata,
            status: proto::MemberStatus::from(m.status) as i32,
            client_id: m.client_id,
            create_index: m.create_index,
            mod_index: m.mod_index,
        }
    }
}

/// A spec becomes a member with the registry's fields left unset: the
/// registry fills in status, owner and indexes.
impl From<&MemberSpec> for proto::Member {
    fn from(spec: &MemberSpec) -> Self {
        Self {
            id: spec.id.clone(),
            service: spec.service.clone(),
            locality: spec.locality.clone(),
            revision: spec.revision.clone(),
            created_ms: spec.created_ms,
            metadata: spec.metadata.clone(),
            ..Default::default()
        }
    }
}

impl From<&Filter> for proto::Filter {
    fn from(filter: &Filter) -> Self {
        Self {
            service: filter.service.clone(),
            locality: filter.locality.clone(),
            metadata: filter.metadata.clone(),
            status: filter
                .status
                .map_or(proto::MemberStatus::Unspecified, proto::MemberStatus::from)
                as i32,
        }
    }
}

impl From<Filter> for proto::Filter {
    fn from(filter: Filter) -> Self {
        proto::Filter::from(&filter)
    }
}

impl From<Consistency> for proto::Consistency {
    fn from(consistency: Consistency) -> Self {
        match consistency {
            Consistency::Linearizable => proto::Consistency::Linearizable,
            Consistency::Stale => proto::Consistency::Stale,
        }
    }
}

impl From<proto::NodeInfo> for NodeInfo {
    fn from(n: proto::NodeInfo) -> Self {
        Self {
            id: n.id,
            addr: n.addr,
            http_addr: n.http_addr,
            role: n.role,
            voter: n.voter,
            last_log_index: n.last_log_index,
            applied_index: n.applied_index,
            liveness: n.liveness,
        }
    }
}

impl From<proto::ClusterStatusResponse> for ClusterStatus {
    fn from(r: proto::ClusterStatusResponse) -> Self {
        Self {
            leader: r.leader,
            term: r.term,
            nodes: r.nodes.into_iter().map(NodeInfo::from).collect(),
            answered_by: r.answered_by,
        }
    }
}

impl From<proto::NodeStatusResponse> for NodeStatus {
    fn from(r: proto::NodeStatusResponse) -> Self {
        Self {
            node: r.node.map(NodeInfo::from).unwrap_or_default(),
            term: r.term,
            leader: r.leader,
            members: r.members,
            sessions: r.sessions,
            subscribers: r.subscribers,
            committed_index: r.committed_index,
            snapshot_index: r.snapshot_index,
            uptime_ms: r.uptime_ms,
            version: r.version,
            data_dir: r.data_dir,
        }
    }
}

impl TryFrom<proto::Change> for Change {
    type Error = Error;

    fn try_from(change: proto::Change) -> Result<Self, Error> {
        match change.kind {
            Some(proto::change::Kind::Upsert(member)) => Ok(Change::Upsert(member.into())),
            Some(proto::change::Kind::Removed(id)) => Ok(Change::Removed(id)),
            None => Err(Error::Protocol("a change without a kind".into())),
        }
    }
}

impl TryFrom<proto::SubscribeResponse> for Event {
    type Error = Error;

    fn try_from(response: proto::SubscribeResponse) -> Result<Self, Error> {
        use proto::subscribe_response::Kind;
        match response.kind {
            Some(Kind::Snapshot(s)) => Ok(Event::Snapshot {
                members: s.members.into_iter().map(Member::from).collect(),
                index: s.index,
            }),
            Some(Kind::Events(e)) => Ok(Event::Changes {
                index: e.index,
                changes: e
                    .changes
                    .into_iter()
                    .map(Change::try_from)
                    .collect::<Result<_, _>>()?,
            }),
            Some(Kind::Progress(p)) => Ok(Event::Progress { index: p.index }),
            None => Err(Error::Protocol(
                "a subscription message without a kind".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn wire_member() -> proto::Member {
        proto::Member {
            id: "web-1".into(),
            service: "web".into(),
            locality: "eu.west".into(),
            revision: "v1".into(),
            created_ms: 11,
            metadata: BTreeMap::from([("port".into(), "80".into())]),
            status: proto::MemberStatus::Up as i32,
            client_id: "c1".into(),
            create_index: 3,
            mod_index: 4,
        }
    }

    #[test]
    fn member_round_trips() {
        let wire = wire_member();
        let member = Member::from(wire.clone());
        assert_eq!(member.status, MemberStatus::Up);
        assert_eq!(member.metadata.get("port").map(String::as_str), Some("80"));
        assert_eq!(proto::Member::from(member), wire);
    }

    #[test]
    fn unknown_status_reads_as_down() {
        let mut wire = wire_member();
        wire.status = proto::MemberStatus::Unspecified as i32;
        assert_eq!(Member::from(wire.clone()).status, MemberStatus::Down);
        wire.status = 42;
        assert_eq!(Member::from(wire).status, MemberStatus::Down);
    }

    #[test]
    fn spec_leaves_registry_fields_unset() {
        let spec = MemberSpec::new("a", "svc").created_ms(5).metadata("k", "v");
        let wire = proto::Member::from(&spec);
        assert_eq!(wire.id, "a");
        assert_eq!(wire.created_ms, 5);
        assert_eq!(wire.status, proto::MemberStatus::Unspecified as i32);
        assert!(wire.client_id.is_empty());
        assert_eq!(wire.mod_index, 0);
    }

    #[test]
    fn filter_status_is_unspecified_when_absent() {
        let wire = proto::Filter::from(Filter::all().service("web"));
        assert_eq!(wire.service, "web");
        assert_eq!(wire.status, proto::MemberStatus::Unspecified as i32);
        let wire =
            proto::Filter::from(Filter::all().status(MemberStatus::Down).metadata("k", "v*"));
        assert_eq!(wire.status, proto::MemberStatus::Down as i32);
        assert_eq!(wire.metadata.get("k").map(String::as_str), Some("v*"));
    }

    #[test]
    fn consistency_maps_to_wire() {
        assert_eq!(
            proto::Consistency::from(Consistency::default()),
            proto::Consistency::Linearizable
        );
        assert_eq!(
            proto::Consistency::from(Consistency::Stale),
            proto::Consistency::Stale
        );
    }

    #[test]
    fn subscribe_responses_become_events() {
        use proto::subscribe_response::Kind;
        let response = proto::SubscribeResponse {
            kind: Some(Kind::Events(proto::Events {
                index: 9,
                changes: vec![
                    proto::Change {
                        kind: Some(proto::change::Kind::Upsert(wire_member())),
                    },
                    proto::Change {
                        kind: Some(proto::change::Kind::Removed("gone".into())),
                    },
                ],
            })),
        };
        let event = Event::try_from(response).unwrap();
        assert_eq!(
            event,
            Event::Changes {
                index: 9,
                changes: vec![
                    Change::Upsert(wire_member().into()),
                    Change::Removed("gone".into())
                ],
            }
        );
        let progress = proto::SubscribeResponse {
            kind: Some(Kind::Progress(proto::Progress { index: 12 })),
        };
        assert_eq!(
            Event::try_from(progress).unwrap(),
            Event::Progress { index: 12 }
        );
        assert!(Event::try_from(proto::SubscribeResponse { kind: None }).is_err());
    }

    #[test]
    fn node_status_without_node_defaults() {
        let status = NodeStatus::from(proto::NodeStatusResponse {
            term: 2,
            ..Default::default()
        });
        assert_eq!(status.term, 2);
        assert_eq!(status.node, NodeInfo::default());
    }
}
