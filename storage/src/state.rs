//! The registry state and its pure apply function.
//!
//! Applying an entry is a deterministic function of (state, index, entry):
//! no clock (the leader stamped `now_ms` into the entry), no randomness and
//! no I/O, so every node reaches the same state and it is unit-tested alone.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::command::{ApplyError, Command, CommandResult, Origin, Outcome, Request};
use crate::member::{Member, MemberSpec, MemberStatus};
use crate::members::Members;
use crate::session::{Session, SessionStatus};

/// How many answers a session keeps for retries when a client never
/// acknowledges them; a well-behaved client keeps far fewer in flight.
pub const MAX_KEPT_ANSWERS: usize = 1024;

/// Every member and session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    /// Members by id.
    pub members: Members,
    /// Sessions by client id.
    pub sessions: BTreeMap<String, Session>,
}

/// What applying one entry did.
#[derive(Debug, Default)]
pub struct ApplyOutput {
    /// One result per command of the entry.
    pub results: Vec<CommandResult>,
    /// Member changes in the order they happened, for subscribers. A member
    /// changed twice in one entry appears once, with its first `before` and
    /// last `after`.
    pub changes: Vec<Change>,
}

/// Collects changes while an entry is applied.
struct Recorder {
    /// Where each member's change is in `changes`, to merge repeated
    /// changes: indices hashed by the change's id. A map keyed by the id
    /// itself copied every id once more and compared strings down a tree,
    /// 3.4% of the three nodes' Raft threads' samples under 256 writers
    /// (perf), for a merge that almost never happens.
    position: HashTable<usize>,
    /// Hashes the ids for `position`.
    hasher: DefaultHashBuilder,
    /// The changes so far.
    changes: Vec<Change>,
}

impl Recorder {
    fn new(commands: usize) -> Recorder {
        Recorder {
            position: HashTable::with_capacity(commands),
            hasher: DefaultHashBuilder::default(),
            changes: Vec::with_capacity(commands),
        }
    }

    fn member(&mut self, id: &str, before: Option<Arc<Member>>, after: Option<Arc<Member>>) {
        let hash = self.hasher.hash_one(id);
        let changes = &mut self.changes;
        match self.position.find(hash, |&i| changes[i].id == id) {
            Some(&i) => changes[i].after = after,
            None => {
                let hasher = &self.hasher;
                self.position.insert_unique(hash, changes.len(), |&i| {
                    hasher.hash_one(changes[i].id.as_str())
                });
                changes.push(Change {
                    id: id.to_string(),
                    before,
                    after,
                });
            }
        }
    }
}

impl RegistryState {
    /// Fills every session's member index from the members' owners (the
    /// index is not stored; see [`Session::members`]).
    pub fn rebuild_session_members(&mut self) {
        for session in self.sessions.values_mut() {
            session.members.clear();
        }
        for (id, member) in self.members.iter() {
            if let Some(session) = self.sessions.get_mut(&*member.client_id) {
                session.members.insert(id.clone());
            }
        }
    }

    /// Applies one log entry at `index`.
    pub fn apply(&mut self, index: u64, request: &Request) -> ApplyOutput {
        let mut rec = Recorder::new(request.commands.len());
        let results = request
            .commands
            .iter()
            .map(|command| self.apply_command(index, request.now_ms, command, &mut rec))
            .collect();
        // A member created and removed in the same entry is no change at all.
        rec.changes
            .retain(|c| c.before.is_some() || c.after.is_some());
        ApplyOutput {
            results,
            changes: rec.changes,
        }
    }

    fn apply_command(
        &mut self,
        index: u64,
        now_ms: u64,
        command: &Command,
        rec: &mut Recorder,
    ) -> CommandResult {
        match command {
            Command::OpenSession {
                client_id,
                heartbeat_timeout_ms,
                reconnect_timeout_ms,
            } => Ok(self.open_session(
                index,
                client_id,
                *heartbeat_timeout_ms,
                *reconnect_timeout_ms,
                rec,
            )),
            Command::Register { origin, spec } => {
                if origin.client_id.is_empty() {
                    return Err(ApplyError::Invalid(
                        "a member must be registered by a session".into(),
                    ));
                }
                self.deduplicated(origin, rec, |state, rec| {
                    state.register(index, origin, spec, rec)
                })
            }
            Command::UpdateMetadata {
                origin,
                id,
                set,
                remove,
            } => self.deduplicated(origin, rec, |state, rec| {
                state.update_metadata(index, origin, id, set, remove, rec)
            }),
            Command::Unregister { origin, id } => self.deduplicated(origin, rec, |state, rec| {
                state.unregister(index, origin, id, rec)
            }),
            Command::CloseSession { client_id } => {
                // Closing a session that is already gone is a retry, not an error.
                self.remove_session(client_id, rec);
                Ok(Outcome::Done)
            }
            Command::SessionsDown { client_ids } => {
                for id in client_ids {
                    self.set_session_status(
                        index,
                        id,
                        SessionStatus::Down { since_ms: now_ms },
                        rec,
                    );
                }
                Ok(Outcome::Done)
            }
            Command::SessionsUp { client_ids } => {
                for id in client_ids {
                    self.set_session_status(index, id, SessionStatus::Up, rec);
                }
                Ok(Outcome::Done)
            }
            Command::SessionsExpired { client_ids } => {
                for id in client_ids {
                    // Only a session still down expires: a heartbeat may have
                    // brought it back between the proposal and this entry.
                    if self.sessions.get(id).is_some_and(|s| !s.is_up()) {
                        self.remove_session(id, rec);
                    }
                }
                Ok(Outcome::Done)
            }
        }
    }

    /// Runs a session write once: a retry with a seq the session has already
    /// answered gets the same answer without applying again.
    fn deduplicated(
        &mut self,
        origin: &Origin,
        rec: &mut Recorder,
        write: impl FnOnce(&mut Self, &mut Recorder) -> CommandResult,
    ) -> CommandResult {
        if origin.client_id.is_empty() || origin.seq == 0 {
            return write(self, rec);
        }
        let Some(session) = self.sessions.get_mut(&origin.client_id) else {
            return Err(ApplyError::SessionNotFound(origin.client_id.clone()));
        };
        if origin.ack_below > session.acked_below {
            session.acked_below = origin.ack_below;
        }
        let floor = session.acked_below;
        // Only the oldest answers fall below the floor: taken from the front
        // rather than by walking every kept answer on every write.
        while let Some(entry) = session.answers.first_entry()
            && *entry.key() < floor
        {
            let _acknowledged = entry.remove();
        }
        if let Some(answer) = session.answers.get(&origin.seq) {
            return answer.clone();
        }
        // The floor, not the request's own ack_below: a delayed duplicate
        // carries the ack_below of its first attempt.
        if origin.seq < floor {
            return Err(ApplyError::StaleRetry {
                client_id: origin.client_id.clone(),
                seq: origin.seq,
            });
        }
        let answer = write(self, rec);
        // Writes never remove their own session, but stay defensive.
        if let Some(session) = self.sessions.get_mut(&origin.client_id) {
            session.answers.insert(origin.seq, answer.clone());
            while session.answers.len() > MAX_KEPT_ANSWERS {
                // An evicted answer can no longer be replayed: raise the
                // floor past it so its retry is refused, not re-applied.
                if let Some((seq, _)) = session.answers.pop_first() {
                    session.acked_below = session.acked_below.max(seq + 1);
                }
            }
        }
        answer
    }

    fn open_session(
        &mut self,
        index: u64,
        client_id: &str,
        heartbeat_timeout_ms: u64,
        reconnect_timeout_ms: u64,
        rec: &mut Recorder,
    ) -> Outcome {
        let resumed = if let Some(session) = self.sessions.get_mut(client_id) {
            session.heartbeat_timeout_ms = heartbeat_timeout_ms;
            session.reconnect_timeout_ms = reconnect_timeout_ms;
            // Opening is a sign of life: a down session comes back up.
            self.set_session_status(index, client_id, SessionStatus::Up, rec);
            true
        } else {
            self.sessions.insert(
                client_id.to_string(),
                Session {
                    client_id: client_id.into(),
                    heartbeat_timeout_ms,
                    reconnect_timeout_ms,
                    status: SessionStatus::Up,
                    create_index: index,
                    members: BTreeSet::new(),
                    answers: BTreeMap::new(),
                    acked_below: 0,
                },
            );
            false
        };
        Outcome::Session {
            client_id: client_id.to_string(),
            resumed,
            heartbeat_timeout_ms,
            reconnect_timeout_ms,
        }
    }

    fn register(
        &mut self,
        index: u64,
        origin: &Origin,
        spec: &MemberSpec,
        rec: &mut Recorder,
    ) -> CommandResult {
        let Some(session) = self.sessions.get(&origin.client_id) else {
            return Err(ApplyError::SessionNotFound(origin.client_id.clone()));
        };
        let status = if session.is_up() {
            MemberStatus::Up
        } else {
            MemberStatus::Down
        };
        // The member's slot, looked up once: a member registered again (an
        // instance restarting, or a benchmark's writers: the common case)
        // is replaced in place, keeping its key. String keys made these
        // lookups a few percent of a node's time under 256 writers.
        let slot = self.members.get_mut(&spec.id);
        // Whether the session's index of its members (rebuilt on load,
        // never stored) holds the id already. It holds every member the
        // session registered, so it is searched only for a member new to
        // it, or one older than the session: left by an earlier session of
        // the same id, which expiry normally prevents.
        let (create_index, indexed) = match &slot {
            Some(existing) if *existing.client_id != *origin.client_id => {
                if self.sessions.contains_key(&*existing.client_id) {
                    return Err(ApplyError::OwnedByOther {
                        id: spec.id.clone(),
                        owner: existing.client_id.to_string(),
                    });
                }
                // The owner is gone (which expiry normally prevents): the
                // member is taken over as new.
                (index, session.members.contains(&spec.id))
            }
            Some(existing) => (
                existing.create_index,
                existing.create_index >= session.create_index || session.members.contains(&spec.id),
            ),
            None => (index, session.members.contains(&spec.id)),
        };
        let member = Arc::new(Member {
            // Copied on purpose. Sharing the command's spec instead saved
            // this copy but kept every member's spec in the allocation the
            // request's decoder made, among short-lived buffers: 35 MB more
            // resident with 100 000 members (docs/benchmarks.md).
            spec: spec.clone(),
            status,
            client_id: Arc::clone(&session.client_id),
            create_index,
            mod_index: index,
        });
        let before = match slot {
            Some(slot) => Some(std::mem::replace(slot, member.clone())),
            None => self.members.insert(spec.id.clone(), member.clone()),
        };
        if !indexed && let Some(session) = self.sessions.get_mut(&origin.client_id) {
            session.members.insert(spec.id.clone());
        }
        rec.member(&spec.id, before, Some(member.clone()));
        Ok(Outcome::Member(member))
    }

    /// Refuses a session write to a member another session owns.
    /// Administrative writes (no session) may touch any member.
    fn check_owner(&self, origin: &Origin, member: &Member) -> Result<(), ApplyError> {
        if origin.client_id.is_empty() || *origin.client_id == *member.client_id {
            return Ok(());
        }
        if !self.sessions.contains_key(&origin.client_id) {
            return Err(ApplyError::SessionNotFound(origin.client_id.clone()));
        }
        Err(ApplyError::OwnedByOther {
            id: member.spec.id.clone(),
            owner: member.client_id.to_string(),
        })
    }

    fn update_metadata(
        &mut self,
        index: u64,
        origin: &Origin,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
        rec: &mut Recorder,
    ) -> CommandResult {
        let Some(before) = self.members.get(id) else {
            return Err(ApplyError::MemberNotFound(id.to_string()));
        };
        self.check_owner(origin, before)?;
        let before = before.clone();
        let mut after = Member::clone(&before);
        for (key, value) in set {
            after.spec.metadata.insert(key.clone(), value.clone());
        }
        for key in remove {
            after.spec.metadata.remove(key);
        }
        after.mod_index = index;
        let after = Arc::new(after);
        self.members.insert(id.to_string(), after.clone());
        rec.member(id, Some(before), Some(after.clone()));
        Ok(Outcome::Member(after))
    }

    fn unregister(
        &mut self,
        index: u64,
        origin: &Origin,
        id: &str,
        rec: &mut Recorder,
    ) -> CommandResult {
        let Some(member) = self.members.get(id) else {
            return Err(ApplyError::MemberNotFound(id.to_string()));
        };
        self.check_owner(origin, member)?;
        let member = self.members.remove(id).expect("checked above");
        if let Some(session) = self.sessions.get_mut(&*member.client_id) {
            session.members.remove(id);
        }
        rec.member(id, Some(member), None);
        Ok(Outcome::Removed { index })
    }

    fn remove_session(&mut self, client_id: &str, rec: &mut Recorder) {
        let Some(session) = self.sessions.remove(client_id) else {
            return;
        };
        for id in &session.members {
            if let Some(member) = self.members.remove(id) {
                rec.member(id, Some(member), None);
            }
        }
    }

    fn set_session_status(
        &mut self,
        index: u64,
        client_id: &str,
        status: SessionStatus,
        rec: &mut Recorder,
    ) {
        let Some(session) = self.sessions.get_mut(client_id) else {
            return;
        };
        if session.is_up() == matches!(status, SessionStatus::Up) {
            return;
        }
        session.status = status;
        let member_status = if session.is_up() {
            MemberStatus::Up
        } else {
            MemberStatus::Down
        };
        for id in &session.members {
            if let Some(member) = self.members.get_mut(id) {
                let before = member.clone();
                // Copies the member: `before` shares the old one.
                let changed = Arc::make_mut(member);
                changed.status = member_status;
                changed.mod_index = index;
                rec.member(id, Some(before), Some(member.clone()));
            }
        }
    }
}
