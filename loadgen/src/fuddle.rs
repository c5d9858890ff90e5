//! Fuddle through its Rust SDK, the way an application uses it.

use anyhow::{Context, Result, bail};
use fuddle_client::{
    Change, Client, ClientOptions, Event, Filter, MemberSpec, Session, SessionOptions, Subscription,
};

use crate::args::Target;
use crate::system::{Received, Subscriber, System, Writer, now_ns, read_stamp, stamped_value};

/// How many member ids each writer cycles through. A small set keeps the
/// registry from growing for as long as the run lasts, as a fixed fleet of
/// instances re-registering would.
const IDS_PER_WRITER: usize = 8;

/// The metadata key that carries the stamped payload.
const PAYLOAD_KEY: &str = "payload";

/// Connections to a Fuddle cluster: one SDK client per connection. The SDK
/// keeps one HTTP/2 connection per node per client, so several clients
/// are how load is spread over several connections.
pub struct Fuddle {
    clients: Vec<Client>,
    /// The service every member of the run belongs to, and the filter of
    /// every subscription.
    service: String,
}

impl System for Fuddle {
    type Writer = FuddleWriter;
    type Subscriber = FuddleSubscriber;

    const TARGET: Target = Target::Fuddle;

    async fn connect(endpoints: &[String], conns: usize, tag: &str) -> Result<Self> {
        let mut clients = Vec::with_capacity(conns);
        for i in 0..conns {
            // The SDK talks to the first address it lists and fails over to
            // the rest; rotating the list puts each client on another node.
            let mut addrs = endpoints.to_vec();
            addrs.rotate_left(i % endpoints.len());
            let client = Client::connect_with(addrs, options())
                .await
                .with_context(|| format!("connecting to {}", endpoints[i % endpoints.len()]))?;
            clients.push(client);
        }
        Ok(Self {
            clients,
            service: tag.to_owned(),
        })
    }

    async fn writer(&self, index: usize, value_bytes: usize) -> Result<FuddleWriter> {
        let session = self.clients[index % self.clients.len()]
            .open_session(SessionOptions::default())
            .await
            .context("opening a session")?;
        let ids = (0..IDS_PER_WRITER)
            .map(|k| format!("{}-w{index}-{k}", self.service))
            .collect();
        Ok(FuddleWriter {
            session,
            service: self.service.clone(),
            ids,
            next: 0,
            value_bytes,
        })
    }

    async fn subscriber(&self, index: usize) -> Result<FuddleSubscriber> {
        let mut subscription = self.clients[index % self.clients.len()]
            .subscribe(Filter::all().service(&self.service), None)
            .await
            .context("subscribing")?;
        // Established means the snapshot arrived: every change after it
        // will be delivered.
        loop {
            match subscription.next_event().await {
                Some(Ok(Event::Snapshot { .. })) => break,
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err).context("waiting for the snapshot"),
                None => bail!("the subscription ended before its snapshot"),
            }
        }
        Ok(FuddleSubscriber { subscription })
    }

    async fn close_writers(&self, writers: Vec<FuddleWriter>) {
        // Closing removes the members at once instead of leaving them to
        // expire; concurrently, since a few hundred one at a time add up.
        let closes = writers.into_iter().map(|w| w.session.close());
        for result in futures::future::join_all(closes).await {
            if let Err(err) = result {
                eprintln!("fuddle-bench: closing a session: {err}");
            }
        }
    }
}

/// The SDK's defaults, but patient with a loaded cluster: a benchmark
/// should report a slow answer as latency, and count only real failures.
fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: std::time::Duration::from_secs(30),
        retry_deadline: std::time::Duration::from_secs(60),
        ..ClientOptions::default()
    }
}

/// A session registering (creating or replacing) its members in turn.
pub struct FuddleWriter {
    session: Session,
    service: String,
    ids: Vec<String>,
    next: usize,
    value_bytes: usize,
}

impl Writer for FuddleWriter {
    async fn write(&mut self) -> Result<()> {
        let id = &self.ids[self.next % self.ids.len()];
        self.next += 1;
        let payload = String::from_utf8(stamped_value(now_ns(), self.value_bytes))
            .expect("a stamped value is ASCII");
        self.session
            .register(
                MemberSpec::new(id.clone(), self.service.clone()).metadata(PAYLOAD_KEY, payload),
            )
            .await?;
        Ok(())
    }
}

/// A subscription to the run's service.
pub struct FuddleSubscriber {
    subscription: Subscription,
}

impl Subscriber for FuddleSubscriber {
    async fn next(&mut self, sent: &mut Vec<u64>) -> Result<Received> {
        loop {
            match self.subscription.next_event().await {
                Some(Ok(Event::Changes { changes, .. })) => {
                    // Only upserts carry a payload: removals are the end of
                    // a run, not changes the writers made.
                    sent.extend(changes.iter().filter_map(|change| {
                        match change {
                            Change::Upsert(member) => member
                                .metadata
                                .get(PAYLOAD_KEY)
                                .and_then(|v| read_stamp(v.as_bytes())),
                            Change::Removed(_) => None,
                        }
                    }));
                    return Ok(Received::Changes);
                }
                Some(Ok(Event::Snapshot { .. })) => return Ok(Received::Resync),
                Some(Ok(Event::Progress { .. })) => continue,
                Some(Err(err)) => return Err(err.into()),
                None => bail!("the subscription ended"),
            }
        }
    }
}
