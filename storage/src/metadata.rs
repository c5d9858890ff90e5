//! A member's metadata: a small map from key to value.
//!
//! Members usually carry a handful of keys. A `BTreeMap` allocates a whole
//! node (544 bytes for `String` keys and values) even for one key: at
//! 100 000 members that was 54 MB of a node's heap (measured with
//! heaptrack on a restarted node). A vector sorted by key costs 48 bytes a
//! key and keeps the map's order and lookups (binary search).
//!
//! It is stored and sent in the same form as the map it replaces: postcard
//! writes a map and a sequence of pairs alike, and serde sees a map here,
//! so data dirs need no conversion.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Keys and values, sorted by key, each key once.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    /// An empty map.
    pub fn new() -> Metadata {
        Metadata(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`; returns its previous value.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keys and values in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(String, String)> for Metadata {
    /// Later pairs win over earlier ones with the same key, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Metadata {
        let mut map = Metadata::new();
        for (key, value) in pairs {
            map.insert(key, value);
        }
        map.0.shrink_to_fit();
        map
    }
}

impl Extend<(String, String)> for Metadata {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, pairs: I) {
        for (key, value) in pairs {
            self.insert(key, value);
        }
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Metadata {
        // Already sorted and unique.
        Metadata(map.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Metadata {
    fn from(pairs: [(String, String); N]) -> Metadata {
        pairs.into_iter().collect()
    }
}

impl From<Metadata> for BTreeMap<String, String> {
    fn from(map: Metadata) -> BTreeMap<String, String> {
        map.0.into_iter().collect()
    }
}

impl IntoIterator for Metadata {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Metadata, D::Error> {
        struct MapVisitor;

        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metadata, A::Error> {
                // Exactly the size announced: stored maps are small, and a
                // vector grown by doubling would waste up to half.
                let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some(pair) = access.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                // Stored maps are sorted and unique already; anything else
                // is put in order the way a map would have read it.
                if pairs.windows(2).all(|w| w[0].0 < w[1].0) {
                    Ok(Metadata(pairs))
                } else {
                    Ok(pairs.into_iter().collect())
                }
            }
        }

        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn behaves_like_a_sorted_map() {
        let mut map: Metadata = pairs(&[("b", "2"), ("a", "1"), ("b", "3")])
            .into_iter()
            .collect();
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("b").map(String::as_str), Some("3"));
        assert_eq!(map.insert("c".into(), "4".into()), None);
        assert_eq!(map.insert("a".into(), "5".into()), Some("1".into()));
        assert_eq!(map.remove("b"), Some("3".into()));
        assert_eq!(map.remove("b"), None);
        assert!(!map.contains_key("b"));
        let keys: Vec<&String> = map.keys().collect();
        assert_eq!(keys, ["a", "c"]);
    }

    #[test]
    fn stores_exactly_as_the_map_it_replaces() {
        let map: BTreeMap<String, String> = pairs(&[("zone", "b"), ("a", ""), ("k", "v")])
            .into_iter()
            .collect();
        let ours = Metadata::from(map.clone());
        let bytes = postcard::to_allocvec(&map).unwrap();
        assert_eq!(postcard::to_allocvec(&ours).unwrap(), bytes);
        let back: Metadata = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ours);
        let as_map: BTreeMap<String, String> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(BTreeMap::from(back), as_map);
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
    }

    #[test]
    fn unsorted_input_is_read_as_a_map_would_read_it() {
        let json = r#"{"b":"1","a":"2","b":"3"}"#;
        let ours: Metadata = serde_json::from_str(json).unwrap();
        assert_eq!(
            ours,
            Metadata::from(
                pairs(&[("a", "2"), ("b", "3")])
                    .into_iter()
                    .collect::<BTreeMap<_, _>>()
            )
        );
    }
}
