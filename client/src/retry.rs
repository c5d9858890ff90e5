//! The failover loop every call goes through: try the current node, move
//! on to the next on a transport failure or `UNAVAILABLE`, pause between
//! rounds, and stop at a deadline.

use std::error::Error as StdError;
use std::future::Future;
use std::time::Instant;

use backon::BackoffBuilder;
use fuddle_proto::registry::registry_client::RegistryClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::Client;
use crate::error::{Error, is_transport_status, transport_reason};
use crate::nodes::{Node, humanize};

/// The largest message the client accepts. A snapshot or a list carries
/// every matching member in one message, which outgrows gRPC's default of
/// 4 MiB in a large registry.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Whether a request may be sent again after a failure that leaves open
/// whether it took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Repeating is harmless: reads and idempotent writes.
    Always,
    /// A write the node applies once however often it is sent (a session
    /// write: `(client_id, seq)`). Repeated like `Always`; but once an
    /// attempt left the outcome open (`outcome_open` says whether one
    /// made before this call did), a later refusal cannot say that the
    /// write was not carried out, so giving up then reports
    /// [`Error::Timeout`] instead.
    Write { outcome_open: bool },
    /// Repeat only when the request surely did not take effect: it could
    /// not be sent, or a node refused it with `UNAVAILABLE`.
    IfNotApplied,
}

/// How one attempt failed.
enum Failure {
    /// The request was not sent: no connection could be made.
    NotSent(Error),
    /// A node refused the request with `UNAVAILABLE` (no leader, shutting
    /// down); it did not apply it.
    Refused(Error),
    /// The request may or may not have been processed: the connection
    /// broke, or the answer did not come in time (the client's timeout, or
    /// the node's `DEADLINE_EXCEEDED`).
    Unknown(Error),
    /// A definitive answer; trying elsewhere would not change it.
    Final(Error),
}

impl Client {
    /// Runs `attempt` against the current node and fails over to the others
    /// as `retry` allows. Returns the answer and the index of the node that
    /// gave it.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        retry: Retry,
        mut attempt: F,
    ) -> Result<(T, usize), Error>
    where
        F: FnMut(RegistryClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let nodes = self.nodes();
        let options = self.options();
        let started = Instant::now();
        let mut backoff = options
            .backoff()
            .with_total_delay(Some(options.retry_deadline))
            .build();
        let (mut tried, mut unreachable, mut unreachable_rounds) = (0, 0, 0);
        let mut outcome_open = matches!(retry, Retry::Write { outcome_open: true });
        // What the call reports when it gives up after `err`, which
        // `refused` says surely left the request undone.
        let give_up = |err: Error, refused: bool, outcome_open: bool| match retry {
            Retry::Write { .. } if refused && outcome_open => Error::Timeout(format!(
                "the write's outcome is unknown: an earlier attempt got no answer, and the last one failed ({err})"
            )),
            _ => err,
        };
        loop {
            let index = nodes.current();
            let node = nodes.get(index);
            let failure = match node.channel(options.connect_timeout).await {
                Err(err) => Failure::NotSent(err),
                Ok(channel) => {
                    let client =
                        RegistryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                    match tokio::time::timeout(options.request_timeout, attempt(client)).await {
                        Ok(Ok(answer)) => {
                            nodes.settle(index);
                            return Ok((answer, index));
                        }
                        Ok(Err(status)) => classify(node, status),
                        Err(_) => Failure::Unknown(Error::Timeout(format!(
                            "no answer from {} within {}",
                            node.addr,
                            humanize(options.request_timeout)
                        ))),
                    }
                }
            };
            let (err, again, refused) = match failure {
                Failure::NotSent(err) => {
                    unreachable += 1;
                    (err, true, true)
                }
                Failure::Refused(err) => (err, true, true),
                Failure::Unknown(err) => {
                    outcome_open = true;
                    (err, retry != Retry::IfNotApplied, false)
                }
                Failure::Final(err) => (err, false, false),
            };
            if !again || started.elapsed() >= options.retry_deadline {
                return Err(give_up(err, refused, outcome_open));
            }
            tracing::debug!(addr = %node.addr, error = %err, "call failed; trying the next node");
            nodes.advance_from(index);
            tried += 1;
            if tried < nodes.len() {
                continue;
            }
            // A whole round failed: give up if no node even accepted a
            // connection for several rounds, else pause and go again.
            if unreachable == tried {
                unreachable_rounds += 1;
                if unreachable_rounds >= options.unreachable_rounds {
                    return Err(give_up(err, refused, outcome_open));
                }
            } else {
                unreachable_rounds = 0;
            }
            (tried, unreachable) = (0, 0);
            match backoff.next() {
                Some(pause) => {
                    let left = options.retry_deadline.saturating_sub(started.elapsed());
                    tokio::time::sleep(pause.min(left)).await;
                }
                None => return Err(give_up(err, refused, outcome_open)),
            }
        }
    }
}

/// Sorts a failed attempt's status into what may be done about it.
fn classify(node: &Node, status: Status) -> Failure {
    if is_transport_status(&status) {
        // The connection is suspect; the next use of this node connects
        // afresh.
        node.forget();
        let reason =
            StdError::source(&status).map_or_else(|| status.message().to_owned(), transport_reason);
        let err = Error::Unreachable {
            addr: node.addr.clone(),
            reason,
        };
        return if chain_has::<tonic::ConnectError>(&status) {
            Failure::NotSent(err)
        } else {
            Failure::Unknown(err)
        };
    }
    match status.code() {
        Code::Unavailable => Failure::Refused(Error::from(status)),
        // The node gave up waiting (for the commit, or for the leader's
        // answer to a forwarded write): the request may or may not have
        // been carried out, exactly as when the client itself times out.
        Code::DeadlineExceeded => Failure::Unknown(Error::from(status)),
        _ => Failure::Final(Error::from(status)),
    }
}

/// Whether an error of type `E` is anywhere in `err`'s source chain.
fn chain_has<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::Nodes;
    use crate::options::ClientOptions;

    fn classified(status: Status) -> &'static str {
        let nodes = Nodes::new(vec!["127.0.0.1:1".into()], &ClientOptions::default()).unwrap();
        match classify(nodes.get(0), status) {
            Failure::NotSent(_) => "not sent",
            Failure::Refused(_) => "refused",
            Failure::Unknown(_) => "unknown",
            Failure::Final(_) => "final",
        }
    }

    #[test]
    fn a_node_side_timeout_leaves_the_outcome_open() {
        // A session write is repeated after it (same seq); an operator's
        // write is not.
        let status = Status::deadline_exceeded("lost the leader's answer");
        assert_eq!(classified(status), "unknown");
        assert_eq!(classified(Status::unavailable("no leader")), "refused");
        assert_eq!(classified(Status::not_found("member")), "final");
        assert_eq!(classified(Status::failed_precondition("stale")), "final");
    }
}
