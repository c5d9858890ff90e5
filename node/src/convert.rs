//! Conversions between protocol messages and storage types, in one place.

use std::sync::Arc;

use fuddle_proto::registry as pb;
use fuddle_storage::{Change, Filter, Member, MemberSpec, MemberStatus, RegistryState};

use crate::error::NodeError;

/// A stored member as the protocol sends it.
pub fn member_to_pb(m: &Member) -> pb::Member {
    pb::Member {
        id: m.spec.id.clone(),
        service: m.spec.service.clone(),
        locality: m.spec.locality.clone(),
        revision: m.spec.revision.clone(),
        created_ms: m.spec.created_ms,
        metadata: m.spec.metadata.clone().into(),
        status: status_to_pb(m.status) as i32,
        client_id: m.client_id.to_string(),
        create_index: m.create_index,
        mod_index: m.mod_index,
    }
}

fn status_to_pb(s: MemberStatus) -> pb::MemberStatus {
    match s {
        MemberStatus::Up => pb::MemberStatus::Up,
        MemberStatus::Down => pb::MemberStatus::Down,
    }
}

/// The client-supplied part of a member. Registry-owned fields (status,
/// client id, indexes) are ignored: only the registry sets them.
pub fn spec_from_pb(m: pb::Member) -> MemberSpec {
    MemberSpec {
        id: m.id,
        service: m.service,
        locality: m.locality,
        revision: m.revision,
        created_ms: m.created_ms,
        metadata: m.metadata.into(),
    }
}

/// A protocol filter, compiled. An unknown status value is refused.
pub fn filter_from_pb(f: Option<pb::Filter>) -> Result<Filter, NodeError> {
    let Some(f) = f else {
        return Ok(Filter::all());
    };
    let status = match pb::MemberStatus::try_from(f.status) {
        Ok(pb::MemberStatus::Unspecified) => None,
        Ok(pb::MemberStatus::Up) => Some(MemberStatus::Up),
        Ok(pb::MemberStatus::Down) => Some(MemberStatus::Down),
        Err(_) => {
            return Err(NodeError::BadRequest(format!(
                "filter.status: unknown value {}",
                f.status
            )));
        }
    };
    Ok(Filter::new(&f.service, &f.locality, &f.metadata, status))
}

/// What a subscriber with `filter` sees of a change: the member now (if it
/// matches), its removal (if it matched before but not now), or nothing.
pub fn change_to_pb(change: &Change, filter: &Filter) -> Option<pb::Change> {
    use pb::change::Kind;
    let matches = |m: &Option<Arc<Member>>| m.as_ref().is_some_and(|m| filter.matches(m));
    if matches(&change.after) {
        let after = change.after.as_ref().expect("matched");
        Some(pb::Change {
            kind: Some(Kind::Upsert(member_to_pb(after))),
        })
    } else if matches(&change.before) {
        Some(pb::Change {
            kind: Some(Kind::Removed(change.id.clone())),
        })
    } else {
        None
    }
}

/// Every member of `state` that `filter` selects, in no particular order
/// (listings and subscriptions' snapshots sort them with
/// `fuddle_storage::members::sort_by_id`, after the lock), shared, not
/// converted:
/// callers hold the registry's lock only while the references are taken
/// (about a millisecond for 100 000 members, where converting them all
/// took over a hundred and stalled every write meanwhile) and convert
/// after releasing it.
pub fn matching_members(state: &RegistryState, filter: &Filter) -> Vec<Arc<Member>> {
    state
        .members
        .values()
        .filter(|m| filter.matches(m))
        .cloned()
        .collect()
}
