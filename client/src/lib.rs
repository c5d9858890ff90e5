//! The Fuddle Rust SDK.
//!
//! A [`Client`] talks to any node of a Fuddle cluster and fails over to the
//! others. Through it an application opens a [`Session`] (which heartbeats
//! in the background) and registers its members; reads the registry with
//! [`Client::get`] and [`Client::list`]; and follows it live with
//! [`Client::subscribe`] or a local [`View`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), fuddle_client::Error> {
//! use fuddle_client::{Client, Filter, MemberSpec, SessionOptions};
//!
//! let client = Client::connect(["127.0.0.1:8220"]).await?;
//! let session = client.open_session(SessionOptions::default()).await?;
//! session.register(MemberSpec::new("web-1", "web").metadata("port", "8080")).await?;
//! let view = client.view(Filter::all().service("web")).await?;
//! println!("{} web members at index {}", view.len(), view.index());
//! session.close().await?;
//! # Ok(())
//! # }
//! ```

mod chunks;
mod client;
mod cluster;
mod convert;
mod error;
mod event;
mod filter;
mod member;
mod nodes;
mod options;
mod resume;
mod retry;
mod session;
mod subscription;
mod task;
mod view;

pub use client::Client;
pub use cluster::{ClusterStatus, NodeInfo, NodeStatus};
pub use error::Error;
pub use event::{Change, Event};
pub use filter::{Consistency, Filter};
pub use member::{Member, MemberSpec, MemberStatus};
pub use options::ClientOptions;
pub use session::{Session, SessionOptions};
pub use subscription::Subscription;
pub use view::View;
