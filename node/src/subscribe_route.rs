//! `Subscribe` served by the node itself, in front of tonic's generated
//! service, so that every subscriber of an entry is sent the same bytes.
//!
//! Each entry is encoded once per filter (`AppliedEntry::encoded`), as a
//! whole gRPC frame (see `subscribe::stream`). tonic's server encoder
//! would copy each message into a buffer of the stream's own, one copy of
//! the same bytes per subscriber, under four body layers; with 10 000
//! subscribers that per-stream work is most of a fan-out's cost. Here a
//! subscription's body hands h2 the shared frame as it is.
//!
//! Everything else goes to the inner service unchanged. The request side
//! is a single message, read whole and decoded here; the reply's status
//! travels in trailers as gRPC has it (or alone, in the headers, when the
//! request is refused before the stream starts).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use fuddle_proto::registry as pb;
use futures::Stream;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::core::Core;
use crate::registry_service::{MAX_REQUEST_BYTES, open_subscription};
use crate::subscribe::GRPC_HEADER;

/// The method this route serves.
pub const SUBSCRIBE_PATH: &str = "/fuddle.v1.Registry/Subscribe";

/// The registry service `inner` with `Subscribe` served here.
#[derive(Clone)]
pub struct SubscribeRoute<S> {
    /// tonic's generated service, for every other method.
    inner: S,
    /// The node the subscriptions read.
    core: Arc<Core>,
}

impl<S> SubscribeRoute<S> {
    /// `inner`, with its `Subscribe` answered from `core`.
    pub fn new(inner: S, core: Arc<Core>) -> SubscribeRoute<S> {
        SubscribeRoute { inner, core }
    }
}

impl<S: NamedService> NamedService for SubscribeRoute<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for SubscribeRoute<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != SUBSCRIBE_PATH {
            return Box::pin(self.inner.call(request));
        }
        let core = self.core.clone();
        Box::pin(async move {
            Ok(match subscribe(&core, request).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Reads the request and starts the subscription's reply.
async fn subscribe(
    core: &Core,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "grpc-encoding: {encoding:?} is not supported; send the request uncompressed"
        )));
    }
    let body = Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("request: cannot be read: {e}")))?
        .to_bytes();
    let frames = open_subscription(core, decode_request(body)?)?;
    let mut response = http::Response::new(Body::new(Frames {
        frames: Box::pin(frames),
        ended: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

/// The one message of a request body: a frame header, then the message.
fn decode_request(mut body: Bytes) -> Result<pb::SubscribeRequest, Status> {
    if body.len() < GRPC_HEADER {
        return Err(Status::invalid_argument(
            "request: expected one gRPC message, got fewer than 5 bytes",
        ));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented(
            "request: compressed messages are not supported",
        ));
    }
    if body.len() != len {
        return Err(Status::invalid_argument(format!(
            "request: expected one gRPC message of {len} bytes, got {} bytes after its header",
            body.len()
        )));
    }
    // The same status as tonic gives for an undecodable message to every
    // other method (prost's error names the field).
    pb::SubscribeRequest::decode(body).map_err(|e| Status::internal(e.to_string()))
}

/// A subscription's reply body: its frames as data, then its status as
/// trailers.
struct Frames {
    /// The subscription (see `subscribe::stream`).
    frames: Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>,
    /// The trailers were sent: nothing follows.
    ended: bool,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(self.frames.as_mut().poll_next(cx)) {
            Some(Ok(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(match status.add_header(&mut trailers) {
            Ok(()) => Ok(Frame::trailers(trailers)),
            Err(unsendable) => Err(unsendable),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Bytes {
        let mut frame = vec![0];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        Bytes::from(frame)
    }

    #[test]
    fn a_request_is_one_whole_uncompressed_message() {
        let request = pb::SubscribeRequest {
            since_index: Some(7),
            progress_interval_ms: 250,
            ..Default::default()
        };
        let decoded = decode_request(framed(&request.encode_to_vec())).unwrap();
        assert_eq!(decoded, request);
        assert_eq!(
            decode_request(framed(&[])).unwrap(),
            pb::SubscribeRequest::default()
        );

        let short = decode_request(Bytes::from_static(&[0, 0, 0])).unwrap_err();
        assert_eq!(short.code(), tonic::Code::InvalidArgument);
        assert!(short.message().contains("fewer than 5 bytes"), "{short:?}");

        let mut cut = framed(&request.encode_to_vec()).to_vec();
        cut.pop();
        let cut = decode_request(Bytes::from(cut)).unwrap_err();
        assert_eq!(cut.code(), tonic::Code::InvalidArgument);
        assert!(cut.message().contains("bytes after its header"), "{cut:?}");

        let mut compressed = framed(&[]).to_vec();
        compressed[0] = 1;
        let compressed = decode_request(Bytes::from(compressed)).unwrap_err();
        assert_eq!(compressed.code(), tonic::Code::Unimplemented);

        let garbage = decode_request(framed(&[0xff, 0xff, 0xff])).unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::Internal);
        assert!(
            garbage
                .message()
                .starts_with("failed to decode Protobuf message"),
            "{garbage:?}"
        );
    }
}
