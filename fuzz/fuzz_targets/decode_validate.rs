//! Arbitrary bytes through everything a node decodes from the network or
//! its data dir, and through the validation that follows a decode.
//!
//! Every input is tried as each message, so one corpus serves all of them:
//!
//! - each public request (prost), then the node's own checks as its gRPC
//!   service runs them (`Limits::check_*`, `convert::spec_from_pb`,
//!   `convert::filter_from_pb`) and a filter matched against a member;
//! - what a peer (or anyone who reaches the gRPC port) can send over the
//!   internal service (postcard): openraft's vote, append-entries and
//!   install-snapshot requests, forwarded command and heartbeat batches, and
//!   log entries and their `Request` payload, which is then applied to a
//!   registry state;
//! - what the node reads back from sled (postcard): members, sessions, the
//!   whole state, log ids, votes and memberships.
//!
//! Nothing may panic. On top of that, whatever decodes must encode and
//! decode again to the same value, a spec the limits accept must survive
//! the trip to a stored member and back, and apply must be deterministic.

#![no_main]

use std::collections::BTreeMap;
use std::fmt::Debug;

use fuddle_node::convert::{filter_from_pb, member_to_pb, spec_from_pb};
use fuddle_node::forward::{ForwardBatch, HeartbeatBatch};
use fuddle_proto::registry as pb;
use fuddle_storage::codec::{decode, encode};
use fuddle_storage::{
    Command, Entry, Limits, LogId, Member, MemberSpec, MemberStatus, NodeAddr, Origin,
    RegistryState, Request, Session, TypeConfig,
};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    public_requests(data, &limits);
    internal_messages(data);
    stored_values(data);
});

/// A decoded protobuf message encodes and decodes to itself.
fn prost_round_trip<M: Message + Default + PartialEq + Debug>(m: &M) {
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-decoding an encoded message");
    assert_eq!(&again, m, "protobuf round trip");
}

/// Decodes with postcard; what decodes encodes and decodes to itself.
fn postcard_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + Debug + PartialEq,
{
    let value: T = decode(data).ok()?;
    let bytes = encode(&value).expect("encoding a decoded value");
    let again: T = decode(&bytes).expect("re-decoding an encoded value");
    assert_eq!(again, value, "postcard round trip");
    Some(value)
}

/// Like [`postcard_round_trip`], for openraft's messages, which do not
/// implement `PartialEq`: compares their encodings.
fn postcard_round_trip_bytes<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let value: T = decode(data).ok()?;
    let bytes = encode(&value).expect("encoding a decoded value");
    let again: T = decode(&bytes).expect("re-decoding an encoded value");
    assert_eq!(
        encode(&again).expect("encoding again"),
        bytes,
        "postcard round trip"
    );
    Some(value)
}

/// A member to match filters against, and to own registrations.
fn sample_member(spec: MemberSpec) -> Member {
    Member {
        spec,
        status: MemberStatus::Up,
        client_id: "c-1".into(),
        create_index: 1,
        mod_index: 1,
    }
}

fn fixed_member() -> Member {
    sample_member(MemberSpec {
        id: "orders-1".into(),
        service: "orders".into(),
        locality: "aws.us-east-1.us-east-1b".into(),
        revision: "v1".into(),
        created_ms: 1,
        metadata: BTreeMap::from([("env".to_string(), "prod".to_string())]).into(),
    })
}

/// The checks `RegistryService` runs on each request, in its order.
fn public_requests(data: &[u8], limits: &Limits) {
    if let Ok(r) = pb::RegisterRequest::decode(data) {
        prost_round_trip(&r);
        if let Some(origin) = &r.origin {
            let _ = limits.check_client_id("origin.client_id", &origin.client_id);
        }
        if let Some(member) = r.member {
            let spec = spec_from_pb(member);
            if limits.check_spec(&spec).is_ok() {
                // Accepted: stored, sent back, and logged without loss.
                let stored = sample_member(spec.clone());
                assert_eq!(spec_from_pb(member_to_pb(&stored)), spec);
                let request = Request {
                    now_ms: 1,
                    commands: vec![Command::Register {
                        origin: Origin {
                            client_id: "c-1".into(),
                            seq: 1,
                            ack_below: 1,
                        },
                        spec,
                    }]
                    .into(),
                };
                let bytes = encode(&request).expect("encoding a command");
                assert_eq!(
                    decode::<Request>(&bytes).expect("decoding a command"),
                    request
                );
            }
        }
    }
    if let Ok(r) = pb::UpdateMetadataRequest::decode(data) {
        prost_round_trip(&r);
        let ok = limits.check_id("id", &r.id).is_ok()
            && r.remove
                .iter()
                .all(|k| limits.check_metadata_key("remove", k).is_ok())
            && limits.check_metadata("set", &r.set).is_ok();
        if ok {
            // The merge the service checks against the current member.
            let mut merged = fixed_member().spec.metadata;
            merged.extend(r.set.clone());
            for key in &r.remove {
                merged.remove(key);
            }
            let _ = limits.check_metadata("metadata", &merged);
        }
    }
    if let Ok(r) = pb::UnregisterRequest::decode(data) {
        prost_round_trip(&r);
        let _ = limits.check_id("id", &r.id);
    }
    if let Ok(r) = pb::CloseSessionRequest::decode(data) {
        prost_round_trip(&r);
        let _ = limits.check_client_id("client_id", &r.client_id);
    }
    if let Ok(r) = pb::GetMemberRequest::decode(data) {
        prost_round_trip(&r);
        let _ = limits.check_id("id", &r.id);
        let _ = pb::Consistency::try_from(r.consistency);
    }
    if let Ok(r) = pb::ListMembersRequest::decode(data) {
        prost_round_trip(&r);
        if let Ok(filter) = filter_from_pb(r.filter) {
            let _ = filter.matches(&fixed_member());
        }
        let _ = pb::Consistency::try_from(r.consistency);
    }
    if let Ok(r) = pb::SubscribeRequest::decode(data) {
        prost_round_trip(&r);
        if let Ok(filter) = filter_from_pb(r.filter.clone()) {
            let _ = filter.matches(&fixed_member());
            // The filter against a member made of its own patterns.
            if let Some(f) = r.filter {
                let own = sample_member(MemberSpec {
                    id: "m".into(),
                    service: f.service,
                    locality: f.locality,
                    metadata: f.metadata.into(),
                    ..MemberSpec::default()
                });
                let _ = filter.matches(&own);
            }
        }
    }
    if let Ok(r) = pb::SessionRequest::decode(data) {
        prost_round_trip(&r);
        if let Some(pb::session_request::Kind::Open(open)) = r.kind
            && !open.client_id.is_empty()
        {
            let _ = limits.check_client_id("open.client_id", &open.client_id);
        }
    }
    if let Ok(r) = pb::NodeStatusRequest::decode(data) {
        prost_round_trip(&r);
    }
}

/// Applies a request to a state with one session and one member.
fn apply(request: &Request) {
    let mut state = RegistryState::default();
    let open = Request {
        now_ms: 0,
        commands: vec![
            Command::OpenSession {
                client_id: "c-1".into(),
                heartbeat_timeout_ms: 1000,
                reconnect_timeout_ms: 1000,
            },
            Command::Register {
                origin: Origin {
                    client_id: "c-1".into(),
                    seq: 1,
                    ack_below: 0,
                },
                spec: fixed_member().spec,
            },
        ]
        .into(),
    };
    state.apply(1, &open);
    apply_on(state, request);
}

/// Applies a request twice, on `state` and on a copy decoded from its
/// encoding (as a restarted node or a snapshot's receiver holds it, with
/// hash maps seeded afresh): the results and the changes must agree (apply
/// is a pure function, and no output may follow a map's iteration order).
/// Then once more, as a retry would be.
fn apply_on(mut state: RegistryState, request: &Request) {
    let mut other: RegistryState =
        decode(&encode(&state).expect("a state encodes")).expect("and decodes");
    other.rebuild_session_members();
    let a = state.apply(2, request);
    let b = other.apply(2, request);
    assert_eq!(a.results, b.results, "apply is deterministic");
    assert_eq!(a.changes, b.changes, "apply is deterministic");
    assert_eq!(state, other, "apply is deterministic");
    // Applied again (a retry in a later entry): still no panic.
    let _ = state.apply(3, request);
}

/// What the internal service decodes from a peer's `RaftMessage.data`.
fn internal_messages(data: &[u8]) {
    let _ = postcard_round_trip_bytes::<VoteRequest<u64>>(data);
    let _ = postcard_round_trip_bytes::<AppendEntriesRequest<TypeConfig>>(data);
    let _ = postcard_round_trip_bytes::<InstallSnapshotRequest<TypeConfig>>(data);
    if let Some(batch) = postcard_round_trip_bytes::<ForwardBatch>(data) {
        apply(&Request {
            now_ms: 1,
            commands: batch.commands.into(),
        });
    }
    let _ = postcard_round_trip_bytes::<HeartbeatBatch>(data);
    if let Some(entry) = postcard_round_trip_bytes::<Entry>(data)
        && let openraft::EntryPayload::Normal(request) = &entry.payload
    {
        apply(request);
    }
    if let Some(request) = postcard_round_trip::<Request>(data) {
        apply(&request);
    }
}

/// What the stores read back from sled.
fn stored_values(data: &[u8]) {
    let _ = postcard_round_trip::<Member>(data);
    let _ = postcard_round_trip::<Session>(data);
    let _ = postcard_round_trip::<NodeAddr>(data);
    let _ = postcard_round_trip::<LogId>(data);
    let _ = postcard_round_trip_bytes::<openraft::Vote<u64>>(data);
    let _ = postcard_round_trip_bytes::<openraft::StoredMembership<u64, NodeAddr>>(data);
    if let Some(mut state) = postcard_round_trip::<RegistryState>(data) {
        state.rebuild_session_members();
        let client_ids: Vec<String> = state.sessions.keys().cloned().collect();
        let expire = Request {
            now_ms: u64::MAX,
            commands: vec![
                Command::SessionsDown {
                    client_ids: client_ids.clone(),
                },
                Command::SessionsExpired { client_ids },
            ]
            .into(),
        };
        apply_on(state, &expire);
    }
}
