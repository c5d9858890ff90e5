//! A copy of the registry state for a snapshot, taken under the registry's
//! lock in a few milliseconds and encoded after the lock is released.
//!
//! Encoding the state under the lock (59–72 ms for 100 000 members on the
//! benchmark machine) held up apply, and every reader queued behind it,
//! for that long at each snapshot; a full clone of the state takes nearly
//! as long (37–63 ms), because of the map keys and the sessions' member
//! indexes. This copy shares the members (`Arc`) and leaves out what a
//! snapshot does not store (the keys, which are the members' and sessions'
//! own ids, and the sessions' member indexes), and it encodes to exactly
//! the bytes of [`RegistryState`]'s own encoding, so snapshots read as
//! before.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::member::Member;
use crate::session::Session;
use crate::state::RegistryState;

/// What a snapshot stores of a [`RegistryState`].
#[derive(Debug)]
pub(crate) struct StateCopy {
    /// Every member, in the state's map order (arbitrary) until
    /// [`StateCopy::sort_members`] puts them in id order, off the lock.
    members: Vec<Arc<Member>>,
    /// Every session, in client id order, without its member index.
    sessions: Vec<Session>,
}

impl StateCopy {
    /// Copies what a snapshot stores of `state`.
    pub(crate) fn of(state: &RegistryState) -> StateCopy {
        // Taken apart, so that a field added to the state is a compile
        // error here rather than a field missing from snapshots.
        let RegistryState { members, sessions } = state;
        StateCopy {
            members: members
                .iter()
                .map(|(id, member)| {
                    debug_assert_eq!(id, &member.spec.id, "a member is keyed by its id");
                    Arc::clone(member)
                })
                .collect(),
            sessions: sessions
                .iter()
                .map(|(id, session)| {
                    debug_assert_eq!(**id, *session.client_id, "a session is keyed by its id");
                    Session {
                        client_id: session.client_id.clone(),
                        heartbeat_timeout_ms: session.heartbeat_timeout_ms,
                        reconnect_timeout_ms: session.reconnect_timeout_ms,
                        status: session.status,
                        create_index: session.create_index,
                        members: BTreeSet::new(),
                        answers: session.answers.clone(),
                        acked_below: session.acked_below,
                    }
                })
                .collect(),
        }
    }

    /// Puts the members in id order, the order they are encoded in. Done
    /// once before encoding, since encoding walks the value twice (once to
    /// size its buffer, see `codec::encode`); encoding sorts a copy of the
    /// list each time otherwise.
    pub(crate) fn sort_members(&mut self) {
        crate::members::sort_by_id(&mut self.members);
    }
}

/// Encodes as `RegistryState` does: a struct of two maps, by id.
impl Serialize for StateCopy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("RegistryState", 2)?;
        state.serialize_field("members", &MembersById(&self.members))?;
        state.serialize_field("sessions", &SessionsById(&self.sessions))?;
        state.end()
    }
}

/// Members as the map from id to member, in id order as
/// [`crate::Members`] encodes them.
struct MembersById<'a>(&'a [Arc<Member>]);

impl Serialize for MembersById<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_sorted_by(|a, b| a.spec.id <= b.spec.id) {
            return serializer.collect_map(self.0.iter().map(|m| (&m.spec.id, m)));
        }
        let mut sorted: Vec<&Arc<Member>> = self.0.iter().collect();
        crate::members::sort_by_id(&mut sorted);
        serializer.collect_map(sorted.into_iter().map(|m| (&m.spec.id, m)))
    }
}

/// Sessions as the map from client id to session.
struct SessionsById<'a>(&'a [Session]);

impl Serialize for SessionsById<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|s| (&s.client_id, s)))
    }
}
