//! A Subscribe message encoded ahead of time.
//!
//! A node sends the same event to many subscribers and encodes it once.
//! This is the form the generated server's Subscribe method carries;
//! tonic's encoder copies it into each stream's buffer, so the node
//! answers Subscribe with a route of its own that sends the shared bytes
//! as they are (`node/src/subscribe_route.rs`) and uses this type only
//! behind the generated method.

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType};

use crate::registry::SubscribeResponse;

/// The encoded body of a [`SubscribeResponse`]. Only ever encoded (by a
/// node); clients decode the real message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedSubscribeResponse(pub Bytes);

impl EncodedSubscribeResponse {
    /// Encodes a message once.
    pub fn new(message: &SubscribeResponse) -> EncodedSubscribeResponse {
        EncodedSubscribeResponse(Bytes::from(prost::Message::encode_to_vec(message)))
    }
}

impl prost::Message for EncodedSubscribeResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Never decoded in practice; skipping keeps decoding total.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::registry::{Progress, subscribe_response::Kind};

    #[test]
    fn encodes_to_the_same_bytes_as_the_message() {
        let message = SubscribeResponse {
            kind: Some(Kind::Progress(Progress { index: 42 })),
        };
        let encoded = EncodedSubscribeResponse::new(&message);
        assert_eq!(encoded.encode_to_vec(), message.encode_to_vec());
        assert_eq!(SubscribeResponse::decode(encoded.0).unwrap(), message);
    }
}
