//! The registry's members by id: a hash map that encodes in id order.
//!
//! Every registration looks its member up by id, and ids of one service
//! share a long prefix (`payments-eu-west-1b-…`). In a `BTreeMap` each
//! lookup compared the id with a dozen keys or more down the tree, each
//! comparison a `memcmp` over the shared prefix: under 256 writers the
//! lookup in `register` was the largest single item of the three nodes'
//! Raft threads after the allocator (perf). A hash map hashes the id once
//! and compares it with one key.
//!
//! What needs an order asks for it: the encoding (snapshots, and the bytes
//! that compare two states) sorts by id, and so do listings and
//! subscriptions' snapshots ([`sort_by_id`]), after the registry's lock is
//! released.
//!
//! The hasher is foldhash (`hashbrown`'s default), seeded per process.
//! It is fast, not built to resist keys crafted to collide; the ids come
//! from clients, which the node trusts anyway (no authentication, see the
//! operations guide).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::member::Member;

/// Members by id. Reads and writes go through the map it dereferences
/// to; its iteration order is arbitrary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members(HashMap<String, Arc<Member>, DefaultHashBuilder>);

impl Deref for Members {
    type Target = HashMap<String, Arc<Member>, DefaultHashBuilder>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Members {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl FromIterator<(String, Arc<Member>)> for Members {
    fn from_iter<I: IntoIterator<Item = (String, Arc<Member>)>>(pairs: I) -> Members {
        Members(pairs.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Members {
    type Item = (&'a String, &'a Arc<Member>);
    type IntoIter = std::collections::hash_map::Iter<'a, String, Arc<Member>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Sorts members (owned or borrowed) by id, the order of every listing
/// and of every encoding.
pub fn sort_by_id<M: AsRef<Member>>(members: &mut [M]) {
    members.sort_unstable_by(|a, b| a.as_ref().spec.id.cmp(&b.as_ref().spec.id));
}

/// Encodes as the `BTreeMap` it replaced did: a map in id order, so that
/// the bytes of a state depend on its content only, and data dirs and
/// snapshots written before read alike.
impl Serialize for Members {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<(&String, &Arc<Member>)> = self.0.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        serializer.collect_map(sorted)
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        HashMap::deserialize(deserializer).map(Members)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn member(id: &str) -> Arc<Member> {
        Arc::new(Member::for_test(id, "s"))
    }

    #[test]
    fn encodes_as_the_map_in_id_order_and_back() {
        let ids = ["m10", "a", "m2", "b-very-long-id-sharing-a-prefix", "b"];
        let ours: Members = ids.iter().map(|id| (id.to_string(), member(id))).collect();
        let map: BTreeMap<String, Arc<Member>> =
            ids.iter().map(|id| (id.to_string(), member(id))).collect();
        let bytes = crate::codec::encode(&ours).unwrap();
        assert_eq!(bytes, crate::codec::encode(&map).unwrap());
        let back: Members = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, ours);
    }

    #[test]
    fn sorts_listings_by_id() {
        let mut list: Vec<_> = ["m2", "m10", "a"].iter().map(|id| member(id)).collect();
        sort_by_id(&mut list);
        let ids: Vec<&str> = list.iter().map(|m| m.id()).collect();
        assert_eq!(ids, ["a", "m10", "m2"]);
    }
}
