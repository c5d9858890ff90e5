//! The encoding of everything Fuddle stores: postcard (compact, fast, serde)
//! for values and big-endian integers for keys so that sled's byte order is
//! numeric order.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a value for storage.
///
/// The size is counted first and the buffer allocated once. postcard's own
/// `to_stdvec` grows its vector from empty, a reallocation and a copy each
/// time it doubles: for a leader's batched entries, encoded once for the
/// log and once per follower, that growth was 4.2% of the three nodes'
/// Raft threads' samples under 256 writers (perf), more than a second walk
/// over the value costs.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let size = postcard::experimental::serialized_size(value)?;
    postcard::to_extend(value, Vec::with_capacity(size))
}

/// Decodes a stored value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// A log index as a sled key.
pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// A sled key back to a log index.
pub fn key_index(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}
