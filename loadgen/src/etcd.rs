//! etcd v3 over raw gRPC, the way a registry built on etcd uses it: one
//! lease per client, puts attached to it, watches on a key prefix.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::args::Target;
use crate::system::{Received, Subscriber, System, Writer, now_ns, read_stamp, stamped_value};

/// The code generated from `proto/etcd.proto`.
#[allow(clippy::all, missing_docs)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;

/// How many keys each writer cycles through; see the Fuddle side.
const KEYS_PER_WRITER: usize = 8;

/// The lease every writer holds, as a registry client would.
const LEASE_TTL_SECONDS: i64 = 60;

/// Connections to an etcd cluster: one HTTP/2 connection per channel.
pub struct Etcd {
    channels: Vec<Channel>,
    /// Every key of the run starts with this.
    prefix: Vec<u8>,
}

impl System for Etcd {
    type Writer = EtcdWriter;
    type Subscriber = EtcdSubscriber;

    const TARGET: Target = Target::Etcd;

    async fn connect(endpoints: &[String], conns: usize, tag: &str) -> Result<Self> {
        let mut channels = Vec::with_capacity(conns);
        for i in 0..conns {
            let addr = &endpoints[i % endpoints.len()];
            let uri = if addr.contains("://") {
                addr.clone()
            } else {
                format!("http://{addr}")
            };
            let channel = Endpoint::from_shared(uri)
                .with_context(|| format!("bad address {addr}"))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            channels.push(channel);
        }
        Ok(Self {
            channels,
            prefix: format!("/{tag}/").into_bytes(),
        })
    }

    async fn writer(&self, index: usize, value_bytes: usize) -> Result<EtcdWriter> {
        let channel = self.channels[index % self.channels.len()].clone();
        let granted = LeaseClient::new(channel.clone())
            .lease_grant(pb::LeaseGrantRequest {
                ttl: LEASE_TTL_SECONDS,
                id: 0,
            })
            .await
            .context("granting a lease")?
            .into_inner();
        if !granted.error.is_empty() {
            bail!("granting a lease: {}", granted.error);
        }
        let keys = (0..KEYS_PER_WRITER)
            .map(|k| {
                let mut key = self.prefix.clone();
                key.extend_from_slice(format!("w{index}/{k}").as_bytes());
                key
            })
            .collect();
        Ok(EtcdWriter {
            kv: KvClient::new(channel),
            lease: granted.id,
            keys,
            next: 0,
            value_bytes,
        })
    }

    async fn subscriber(&self, index: usize) -> Result<EtcdSubscriber> {
        let channel = self.channels[index % self.channels.len()].clone();
        // The request side must stay open for as long as the watch should
        // live: etcd ends a watch stream whose client stopped sending.
        let (requests, outgoing) = mpsc::channel(1);
        requests
            .send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: self.prefix.clone(),
                        range_end: prefix_end(&self.prefix),
                        ..Default::default()
                    },
                )),
            })
            .await
            .context("queueing the watch request")?;
        let mut responses = WatchClient::new(channel)
            .watch(ReceiverStream::new(outgoing))
            .await
            .context("opening a watch stream")?
            .into_inner();
        loop {
            let response = responses
                .message()
                .await
                .context("waiting for the watch to be created")?
                .context("the watch stream ended before the watch was created")?;
            if response.canceled {
                bail!("the watch was refused: {}", response.cancel_reason);
            }
            if response.created {
                break;
            }
        }
        Ok(EtcdSubscriber {
            _requests: requests,
            responses,
        })
    }

    async fn close_writers(&self, _writers: Vec<EtcdWriter>) {
        // The leases expire on their own a minute later; the subset of the
        // API this tool speaks has no revoke, and a revoke would only
        // delete a few keys per writer.
    }
}

/// The end of the key range that holds exactly the keys starting with
/// `prefix`: the prefix with its last byte incremented (etcd's own rule).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // A prefix of only 0xff bytes: etcd's "to the end of the key space".
    vec![0]
}

/// A client holding a lease and putting its keys in turn.
pub struct EtcdWriter {
    kv: KvClient<Channel>,
    lease: i64,
    keys: Vec<Vec<u8>>,
    next: usize,
    value_bytes: usize,
}

impl Writer for EtcdWriter {
    async fn write(&mut self) -> Result<()> {
        let key = self.keys[self.next % self.keys.len()].clone();
        self.next += 1;
        self.kv
            .put(pb::PutRequest {
                key,
                value: stamped_value(now_ns(), self.value_bytes),
                lease: self.lease,
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

/// One watch on the run's prefix, on its own gRPC stream.
pub struct EtcdSubscriber {
    /// Kept only so that the request side stays open.
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
}

impl Subscriber for EtcdSubscriber {
    async fn next(&mut self, sent: &mut Vec<u64>) -> Result<Received> {
        let Some(response) = self.responses.message().await? else {
            bail!("the watch stream ended");
        };
        if response.canceled {
            // A watch behind the compacted history is cancelled with the
            // compact revision: the etcd form of a resync.
            if response.compact_revision != 0 {
                return Ok(Received::Resync);
            }
            bail!("the watch was cancelled: {}", response.cancel_reason);
        }
        let put = pb::event::EventType::Put as i32;
        sent.extend(
            response
                .events
                .iter()
                .filter(|event| event.r#type == put)
                .filter_map(|event| read_stamp(&event.kv.as_ref()?.value)),
        );
        Ok(Received::Changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
