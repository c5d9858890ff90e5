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

use bytes::{Buf, Bytes, BytesMut};
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
    let mut response = http::Response::new(Body::new(Frames::new(Box::pin(frames))));
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

/// Frames that are ready together leave in one DATA frame of at most
/// about this many bytes: h2 and hyper do their per-frame work (the stream
/// store's lock, flow control, a frame header) once for them, and so does
/// the client's h2 on receipt. A subscriber that fell behind by a few
/// entries catches up in one frame. Small enough that a gathered frame
/// fits the buffer a tonic client decodes into (8 KiB unless configured):
/// at 16 KiB every one of 10 000 client streams grew its buffer, the load
/// generator's memory went from about 300 to 500-650 MB, and zeroing the
/// new pages was a sixth of its CPU (it allocated with mimalloc then); 2
/// and 4 KiB did alike.
const COALESCE_BYTES: usize = 4 * 1024;

/// How many frames' room a stream keeps for its next gathering: a
/// gathering of many small frames (up to [`COALESCE_BYTES`] of them at a
/// few bytes each) does not leave every stream holding room for as many.
const READY_KEPT: usize = 8;

/// A subscription's reply body: its frames as data, then its status as
/// trailers.
struct Frames {
    /// The subscription (see `subscribe::stream`).
    frames: Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>,
    /// A frame taken while gathering that would have taken the gathering
    /// past [`COALESCE_BYTES`]: it goes next, before anything else.
    held: Option<Bytes>,
    /// The frames of a gathering after its first, until they are copied
    /// into one buffer; kept empty between polls, so that its allocation
    /// serves every gathering of the stream (up to [`READY_KEPT`] frames'
    /// worth).
    ready: Vec<Bytes>,
    /// How the subscription ended, when it ended while frames before it
    /// were being gathered: sent as trailers once they are.
    end: Option<Status>,
    /// The trailers were sent: nothing follows.
    ended: bool,
}

impl Frames {
    fn new(frames: Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>) -> Frames {
        Frames {
            frames,
            held: None,
            ready: Vec::new(),
            end: None,
            ended: false,
        }
    }

    /// `first`, followed by the frames the subscription has ready at once
    /// while they fit in [`COALESCE_BYTES`] together. A frame alone is
    /// passed on as it is (shared with the entry's other subscribers), and
    /// so is one that does not fit, on the next poll; frames gathered
    /// together are copied into one buffer, which costs less than a DATA
    /// frame each. The buffer is allocated once they are all in, at their
    /// size: grown frame by frame, its reallocations and their copies were
    /// about a sixth of the nodes' runtime samples in a profile of a
    /// fan-out (docs/benchmarks.md, "What each change bought").
    fn gather(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        let mut len = first.len();
        while len < COALESCE_BYTES {
            let next = match self.frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(next))) => next,
                Poll::Ready(Some(Err(status))) => {
                    self.end = Some(status);
                    break;
                }
                Poll::Ready(None) => {
                    self.end = Some(Status::ok(""));
                    break;
                }
                Poll::Pending => break,
            };
            if len + next.len() > COALESCE_BYTES {
                self.held = Some(next);
                break;
            }
            len += next.len();
            self.ready.push(next);
        }
        if self.ready.is_empty() {
            return first;
        }
        let mut gathered = BytesMut::with_capacity(len);
        gathered.extend_from_slice(&first);
        for next in self.ready.drain(..) {
            gathered.extend_from_slice(&next);
        }
        self.ready.shrink_to(READY_KEPT);
        gathered.freeze()
    }
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
        if let Some(held) = self.held.take() {
            // What the gathering before it found after it (an end, another
            // frame) is still in `end` or the stream.
            let data = if self.end.is_some() {
                held
            } else {
                self.gather(held, cx)
            };
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let status = match self.end.take() {
            Some(status) => status,
            None => match ready!(self.frames.as_mut().poll_next(cx)) {
                Some(Ok(first)) => {
                    let data = self.gather(first, cx);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            },
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

    /// One step of a scripted subscription stream.
    enum Step {
        Frame(Bytes),
        Fail(Status),
        /// Nothing ready yet (the waker is woken at once).
        Wait,
        End,
    }

    /// A subscription stream that plays `steps` and panics if polled after
    /// it ended or failed, or past its script.
    struct Script {
        steps: std::collections::VecDeque<Step>,
        over: bool,
    }

    impl Stream for Script {
        type Item = Result<Bytes, Status>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            assert!(!self.over, "polled after its end");
            match self.steps.pop_front().expect("polled past its script") {
                Step::Frame(frame) => Poll::Ready(Some(Ok(frame))),
                Step::Fail(status) => {
                    self.over = true;
                    Poll::Ready(Some(Err(status)))
                }
                Step::Wait => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Step::End => {
                    self.over = true;
                    Poll::Ready(None)
                }
            }
        }
    }

    fn body(steps: Vec<Step>) -> Frames {
        Frames::new(Box::pin(Script {
            steps: steps.into(),
            over: false,
        }))
    }

    /// The body's frames in order: data chunks, then the trailers' status;
    /// checks that the body says it has ended only after the trailers.
    async fn drain(body: Frames) -> (Vec<Bytes>, tonic::Code) {
        let mut body = std::pin::pin!(body);
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("a sendable status");
            match frame.into_data() {
                Ok(chunk) => {
                    assert!(
                        !http_body::Body::is_end_stream(&*body),
                        "ended before its trailers"
                    );
                    data.push(chunk);
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().expect("data or trailers");
                    assert!(http_body::Body::is_end_stream(&*body));
                    assert!(body.frame().await.is_none(), "nothing after the trailers");
                    let code =
                        Status::from_header_map(&trailers).map_or(tonic::Code::Ok, |s| s.code());
                    return (data, code);
                }
            }
        }
        panic!("the body ended without trailers");
    }

    #[tokio::test]
    async fn frames_ready_together_leave_in_one_data_frame_before_the_status() {
        let (a, b, c) = (framed(b"a"), framed(b"bb"), framed(b"ccc"));
        let all = [a.clone(), b.clone(), c.clone()].concat();
        let steps = vec![
            Step::Frame(a.clone()),
            Step::Frame(b.clone()),
            Step::Frame(c),
            Step::End,
        ];
        let (data, code) = drain(body(steps)).await;
        assert_eq!(data, vec![Bytes::from(all)]);
        assert_eq!(code, tonic::Code::Ok);

        // An error right behind the frames ends the stream after them.
        let failed = Status::resource_exhausted("too large");
        let steps = vec![
            Step::Frame(a.clone()),
            Step::Frame(b.clone()),
            Step::Fail(failed),
        ];
        let (data, code) = drain(body(steps)).await;
        assert_eq!(data, vec![Bytes::from([a, b].concat())]);
        assert_eq!(code, tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn each_gathering_takes_only_what_is_ready_with_it() {
        let (a, b, c, d) = (framed(b"a"), framed(b"b"), framed(b"c"), framed(b"d"));
        let steps = vec![
            Step::Frame(a.clone()),
            Step::Frame(b.clone()),
            Step::Wait,
            Step::Frame(c.clone()),
            Step::Frame(d.clone()),
            Step::End,
        ];
        let (data, code) = drain(body(steps)).await;
        assert_eq!(
            data,
            vec![Bytes::from([a, b].concat()), Bytes::from([c, d].concat())]
        );
        assert_eq!(code, tonic::Code::Ok);
    }

    #[tokio::test]
    async fn a_gathering_of_many_small_frames_leaves_little_room_behind() {
        let small = framed(b"x");
        let count = COALESCE_BYTES / small.len();
        let mut steps: Vec<Step> = (0..count).map(|_| Step::Frame(small.clone())).collect();
        steps.push(Step::Wait);
        let mut body = std::pin::pin!(body(steps));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), count * small.len());
        assert!(body.ready.is_empty());
        assert!(
            body.ready.capacity() <= READY_KEPT,
            "{}",
            body.ready.capacity()
        );
    }

    #[tokio::test]
    async fn a_frame_alone_is_sent_as_it_is() {
        // Nothing else ready: the shared bytes themselves, uncopied.
        let alone = framed(b"shared");
        let steps = vec![Step::Frame(alone.clone()), Step::Wait, Step::End];
        let mut body = std::pin::pin!(body(steps));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.as_ptr(), alone.as_ptr());
    }

    #[tokio::test]
    async fn a_gathering_stops_before_the_frame_that_would_not_fit() {
        // Four of these fit in the limit, the fifth goes next.
        let part = framed(&vec![1; COALESCE_BYTES / 4 - 100 - GRPC_HEADER]);
        let mut steps: Vec<Step> = (0..5).map(|_| Step::Frame(part.clone())).collect();
        steps.push(Step::End);
        let (data, code) = drain(body(steps)).await;
        assert_eq!(
            data.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![4 * part.len(), part.len()]
        );
        assert_eq!(code, tonic::Code::Ok);

        // A large frame behind a small one is not copied in: it follows,
        // uncopied, and what comes after it starts a gathering of its own.
        let (small, large, last) = (
            framed(b"s"),
            framed(&vec![2; 3 * COALESCE_BYTES]),
            framed(b"l"),
        );
        let steps = vec![
            Step::Frame(small.clone()),
            Step::Frame(large.clone()),
            Step::Frame(last.clone()),
            Step::End,
        ];
        let (data, code) = drain(body(steps)).await;
        assert_eq!(data, vec![small, large.clone(), last]);
        assert_eq!(data[1].as_ptr(), large.as_ptr());
        assert_eq!(code, tonic::Code::Ok);
    }
}
