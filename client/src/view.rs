//! A local, continuously updated copy of the members matching a filter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::client::Client;
use crate::error::Error;
use crate::event::{Change, Event};
use crate::filter::Filter;
use crate::member::Member;
use crate::subscription::Subscription;
use crate::task::AbortOnDrop;

/// The members matching a filter, kept current by a subscription in a
/// background task. The subscription resumes after the view's index on
/// reconnect, so the view never misses or repeats a change. Dropping the
/// view stops the task.
pub struct View {
    members: Arc<RwLock<BTreeMap<String, Member>>>,
    index: watch::Receiver<u64>,
    /// Why the view stopped following the registry, once it has.
    failure: Arc<Mutex<Option<Error>>>,
    _follower: AbortOnDrop,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("index", &self.index())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a view of the members matching `filter`. Returns once the
    /// first snapshot is in, so the view is complete from the start.
    pub async fn view(&self, filter: Filter) -> Result<View, Error> {
        let mut subscription = self.subscribe(filter, None).await?;
        let mut members = BTreeMap::new();
        let first = match subscription.next_event().await {
            Some(event) => event?,
            None => {
                return Err(Error::Stopped(
                    "the subscription ended before its snapshot".into(),
                ));
            }
        };
        let index = apply(&mut members, first);
        let members = Arc::new(RwLock::new(members));
        let failure = Arc::new(Mutex::new(None));
        let (index_sender, index_receiver) = watch::channel(index);
        let follower = AbortOnDrop::spawn(follow(
            subscription,
            members.clone(),
            index_sender,
            failure.clone(),
        ));
        Ok(View {
            members,
            index: index_receiver,
            failure,
            _follower: follower,
        })
    }
}

impl View {
    /// A copy of every member in the view, by id.
    pub fn members(&self) -> BTreeMap<String, Member> {
        self.members.read().expect("view lock").clone()
    }

    /// One member, if the view holds it.
    pub fn get(&self, id: &str) -> Option<Member> {
        self.members.read().expect("view lock").get(id).cloned()
    }

    /// How many members the view holds.
    pub fn len(&self) -> usize {
        self.members.read().expect("view lock").len()
    }

    /// Whether the view holds no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log index the view reflects.
    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// A receiver that sees the view's index each time it moves; the
    /// members are updated before the index.
    pub fn watch_index(&self) -> watch::Receiver<u64> {
        self.index.clone()
    }

    /// Waits until the view reflects `index` (for example the index a write
    /// returned). Fails if the view stopped following the registry.
    pub async fn wait_for_index(&self, index: u64) -> Result<u64, Error> {
        let mut receiver = self.index.clone();
        match receiver.wait_for(|current| *current >= index).await {
            Ok(current) => Ok(*current),
            Err(_) => Err(self
                .failure
                .lock()
                .expect("view lock")
                .clone()
                .unwrap_or_else(|| Error::Stopped("the view's subscription ended".into()))),
        }
    }
}

/// Applies the subscription's events to the view until it ends.
async fn follow(
    mut subscription: Subscription,
    members: Arc<RwLock<BTreeMap<String, Member>>>,
    index: watch::Sender<u64>,
    failure: Arc<Mutex<Option<Error>>>,
) {
    while let Some(event) = subscription.next_event().await {
        match event {
            Ok(event) => {
                let at = apply(&mut members.write().expect("view lock"), event);
                index.send_if_modified(|current| {
                    let moved = at > *current;
                    *current = (*current).max(at);
                    moved
                });
            }
            Err(err) => {
                // Recorded before the index sender is dropped, so a waiter
                // woken by the drop finds the reason.
                *failure.lock().expect("view lock") = Some(err);
                return;
            }
        }
    }
}

/// Applies one event to a set of members and returns the event's index.
fn apply(members: &mut BTreeMap<String, Member>, event: Event) -> u64 {
    let index = event.index();
    match event {
        Event::Snapshot {
            members: snapshot, ..
        } => {
            *members = snapshot.into_iter().map(|m| (m.id.clone(), m)).collect();
        }
        Event::Changes { changes, .. } => {
            for change in changes {
                match change {
                    Change::Upsert(member) => {
                        members.insert(member.id.clone(), member);
                    }
                    Change::Removed(id) => {
                        members.remove(&id);
                    }
                }
            }
        }
        Event::Progress { .. } => {}
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberStatus;

    fn member(id: &str, mod_index: u64) -> Member {
        Member {
            id: id.into(),
            service: "svc".into(),
            locality: String::new(),
            revision: String::new(),
            created_ms: 0,
            metadata: BTreeMap::new(),
            status: MemberStatus::Up,
            client_id: "c".into(),
            create_index: mod_index,
            mod_index,
        }
    }

    #[test]
    fn snapshot_replaces_and_changes_apply_in_order() {
        let mut members = BTreeMap::from([("stale".to_owned(), member("stale", 1))]);
        let index = apply(
            &mut members,
            Event::Snapshot {
                members: vec![member("a", 2), member("b", 3)],
                index: 5,
            },
        );
        assert_eq!(index, 5);
        assert_eq!(members.keys().collect::<Vec<_>>(), ["a", "b"]);
        let index = apply(
            &mut members,
            Event::Changes {
                index: 6,
                changes: vec![
                    Change::Upsert(member("a", 6)),
                    Change::Removed("b".into()),
                    Change::Upsert(member("c", 6)),
                ],
            },
        );
        assert_eq!(index, 6);
        assert_eq!(members.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(members["a"].mod_index, 6);
        assert_eq!(apply(&mut members, Event::Progress { index: 9 }), 9);
        assert_eq!(members.len(), 2);
    }
}
