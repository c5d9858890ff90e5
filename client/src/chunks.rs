//! Reassembly of snapshots that a node sends in several messages.

use fuddle_proto::registry as proto;
use proto::subscribe_response::Kind;

use crate::error::Error;
use crate::event::Event;
use crate::member::Member;

/// Collects the parts of a large snapshot (all with the same index, every
/// one but the last marked `more`) so that the consumer receives one
/// [`Event::Snapshot`] and never a partial view.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    partial: Option<(u64, Vec<Member>)>,
}

impl Chunks {
    /// Takes one message off the stream; returns an event once one is
    /// complete. A snapshot interrupted by anything but its own next part
    /// is a protocol error: passing on what follows could leave a gap.
    pub(crate) fn feed(
        &mut self,
        response: proto::SubscribeResponse,
    ) -> Result<Option<Event>, Error> {
        match response.kind {
            Some(Kind::Snapshot(part)) => {
                let mut members = match self.partial.take() {
                    Some((index, members)) if index == part.index => members,
                    Some((index, _)) => {
                        return Err(Error::Protocol(format!(
                            "the snapshot at index {index} was followed by a part of one at {}",
                            part.index
                        )));
                    }
                    None => Vec::new(),
                };
                members.extend(part.members.into_iter().map(Member::from));
                if part.more {
                    self.partial = Some((part.index, members));
                    Ok(None)
                } else {
                    Ok(Some(Event::Snapshot {
                        members,
                        index: part.index,
                    }))
                }
            }
            kind => {
                if let Some((index, _)) = self.partial.take() {
                    return Err(Error::Protocol(format!(
                        "the snapshot at index {index} was cut short"
                    )));
                }
                Event::try_from(proto::SubscribeResponse { kind }).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(index: u64, ids: &[&str], more: bool) -> proto::SubscribeResponse {
        let members = ids
            .iter()
            .map(|id| proto::Member {
                id: (*id).into(),
                ..Default::default()
            })
            .collect();
        proto::SubscribeResponse {
            kind: Some(Kind::Snapshot(proto::Snapshot {
                members,
                index,
                more,
            })),
        }
    }

    fn ids(event: Option<Event>) -> Vec<String> {
        match event {
            Some(Event::Snapshot { members, .. }) => members.into_iter().map(|m| m.id).collect(),
            other => panic!("not a snapshot: {other:?}"),
        }
    }

    #[test]
    fn a_whole_snapshot_passes_at_once() {
        let mut chunks = Chunks::default();
        assert_eq!(ids(chunks.feed(part(3, &["a"], false)).unwrap()), ["a"]);
    }

    #[test]
    fn parts_are_joined_into_one_snapshot() {
        let mut chunks = Chunks::default();
        assert!(chunks.feed(part(3, &["a", "b"], true)).unwrap().is_none());
        assert!(chunks.feed(part(3, &["c"], true)).unwrap().is_none());
        assert_eq!(
            ids(chunks.feed(part(3, &["d"], false)).unwrap()),
            ["a", "b", "c", "d"]
        );
        // The next snapshot starts afresh.
        assert_eq!(ids(chunks.feed(part(9, &["z"], false)).unwrap()), ["z"]);
    }

    #[test]
    fn an_interrupted_snapshot_is_an_error() {
        let mut chunks = Chunks::default();
        chunks.feed(part(3, &["a"], true)).unwrap();
        let progress = proto::SubscribeResponse {
            kind: Some(Kind::Progress(proto::Progress { index: 3 })),
        };
        assert!(chunks.feed(progress).is_err());
        chunks.feed(part(3, &["a"], true)).unwrap();
        assert!(chunks.feed(part(4, &["b"], false)).is_err());
    }
}
