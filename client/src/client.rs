//! The client handle and the calls that need no session.

use std::collections::BTreeMap;
use std::sync::Arc;

use fuddle_proto::registry as proto;
use tonic::Response;

use crate::cluster::{ClusterStatus, NodeStatus};
use crate::error::Error;
use crate::filter::{Consistency, Filter};
use crate::member::Member;
use crate::nodes::Nodes;
use crate::options::ClientOptions;
use crate::retry::Retry;

/// A handle on a Fuddle cluster. Cheap to clone: clones share connections
/// and the memory of which node answered last.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Nodes,
    options: ClientOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("current", &self.current_addr())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the first reachable node of `addrs` (each `host:port`),
    /// with default options.
    pub async fn connect<I, S>(addrs: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_with(addrs, ClientOptions::default()).await
    }

    /// Connects to the first reachable node of `addrs` (each `host:port`).
    /// Fails at once on a malformed address, and with
    /// [`Error::Unreachable`] when no node accepts a connection.
    pub async fn connect_with<I, S>(addrs: I, options: ClientOptions) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes = Nodes::new(addrs.into_iter().map(Into::into).collect(), &options)?;
        let client = Client {
            inner: Arc::new(Inner { nodes, options }),
        };
        // Connecting up front reports a wrong or dead address where the
        // client is made, not at some later call.
        client.call(Retry::Always, |_| async { Ok(()) }).await?;
        Ok(client)
    }

    /// The address of the node calls currently go to.
    pub fn current_addr(&self) -> &str {
        let nodes = &self.inner.nodes;
        &nodes.get(nodes.current()).addr
    }

    /// The client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    pub(crate) fn nodes(&self) -> &Nodes {
        &self.inner.nodes
    }

    /// One member and the index the answer reflects.
    pub async fn get(&self, id: &str, consistency: Consistency) -> Result<(Member, u64), Error> {
        let request = proto::GetMemberRequest {
            id: id.to_owned(),
            consistency: proto::Consistency::from(consistency) as i32,
        };
        let (response, _) = self
            .call(Retry::Always, |mut rpc| {
                let request = request.clone();
                async move { rpc.get_member(request).await.map(Response::into_inner) }
            })
            .await?;
        let member = response
            .member
            .ok_or_else(|| Error::Protocol("GetMember answered without a member".into()))?;
        Ok((member.into(), response.index))
    }

    /// Every member matching `filter` and the index the answer reflects.
    pub async fn list(
        &self,
        filter: Filter,
        consistency: Consistency,
    ) -> Result<(Vec<Member>, u64), Error> {
        let request = proto::ListMembersRequest {
            filter: Some(filter.into()),
            consistency: proto::Consistency::from(consistency) as i32,
        };
        let (response, _) = self
            .call(Retry::Always, |mut rpc| {
                let request = request.clone();
                async move { rpc.list_members(request).await.map(Response::into_inner) }
            })
            .await?;
        Ok((
            response.members.into_iter().map(Member::from).collect(),
            response.index,
        ))
    }

    /// Removes a member whatever session owns it (an operator's action).
    /// Returns the index that removed it.
    pub async fn unregister(&self, id: &str) -> Result<u64, Error> {
        let request = proto::UnregisterRequest {
            origin: Some(admin_origin()),
            id: id.to_owned(),
        };
        // Without a session there is no sequence number to make a repeat
        // harmless: a repeat after a lost answer would report NOT_FOUND for
        // a removal that worked. So it is repeated only when surely unsent.
        let (response, _) = self
            .call(Retry::IfNotApplied, |mut rpc| {
                let request = request.clone();
                async move { rpc.unregister(request).await.map(Response::into_inner) }
            })
            .await?;
        Ok(response.index)
    }

    /// Sets and removes metadata keys of any member (an operator's action).
    /// Returns the member as it is after the change.
    pub async fn update_metadata(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Member, Error> {
        let request = proto::UpdateMetadataRequest {
            origin: Some(admin_origin()),
            id: id.to_owned(),
            set,
            remove,
        };
        // Setting and removing keys gives the same result however often it
        // is applied, so a repeat is harmless.
        let (response, _) = self
            .call(Retry::Always, |mut rpc| {
                let request = request.clone();
                async move { rpc.update_metadata(request).await.map(Response::into_inner) }
            })
            .await?;
        written_member(response)
    }

    /// The Raft view of the cluster from the answering node.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let (response, _) = self
            .call(Retry::Always, |mut rpc| async move {
                rpc.cluster_status(proto::ClusterStatusRequest {})
                    .await
                    .map(Response::into_inner)
            })
            .await?;
        Ok(response.into())
    }

    /// One node's status; `None` for the node that answers.
    pub async fn node_status(&self, node_id: Option<u64>) -> Result<NodeStatus, Error> {
        let request = proto::NodeStatusRequest {
            node_id: node_id.unwrap_or(0),
        };
        let (response, _) = self
            .call(Retry::Always, |mut rpc| async move {
                rpc.node_status(request).await.map(Response::into_inner)
            })
            .await?;
        Ok(response.into())
    }
}

/// The origin of a write made without a session: an operator's action,
/// with no retry protection.
fn admin_origin() -> proto::WriteOrigin {
    proto::WriteOrigin::default()
}

/// The member a write answered with; a write that changes a member must
/// return it.
pub(crate) fn written_member(response: proto::WriteResponse) -> Result<Member, Error> {
    response
        .member
        .map(Member::from)
        .ok_or_else(|| Error::Protocol("a write answered without the member".into()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_reported_quickly_and_plainly() {
        // Bind and release a port so that nothing listens on it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let started = Instant::now();
        let err = Client::connect([addr.clone()]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach {addr}: connection refused")
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_write_whose_outcome_was_left_open_is_not_reported_as_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let options = ClientOptions {
            retry_deadline: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let client = Client {
            inner: Arc::new(Inner {
                nodes: Nodes::new(vec![addr], &options).unwrap(),
                options,
            }),
        };
        let attempt = |_| async { Ok(()) };
        // Nothing could be sent: surely not carried out.
        let err = client
            .call(
                Retry::Write {
                    outcome_open: false,
                },
                attempt,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        // An attempt before this call (on the session stream) may have
        // been: the refusal of the last one does not settle it.
        let err = client
            .call(Retry::Write { outcome_open: true }, attempt)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout(m) if m.contains("outcome is unknown") && m.contains("connection refused")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_malformed_address_is_refused_before_connecting() {
        let err = Client::connect(["no-port"]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    }
}
