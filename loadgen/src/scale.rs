//! `scale`: how a Fuddle cluster holds a large registry. Registers many
//! distinct members (through a few sessions), then times what a client
//! joining such a registry waits for: a linearizable list of everything,
//! and the first full snapshot of a new subscription. Resident memory and
//! restart time are measured from outside, by `benches/scale.sh`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use fuddle_client::{Client, Consistency, Event, Filter, MemberSpec, SessionOptions};
use futures::StreamExt;
use serde::Serialize;

/// Options of `scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Distinct members to register (0: only measure what is there).
    #[arg(long, default_value_t = 100_000)]
    pub members: u64,
    /// Sessions registering at once; each owns members/sessions members.
    #[arg(long, default_value_t = 64)]
    pub clients: u64,
    /// Metadata bytes per member.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Keep the sessions (and so the members) alive for this long after
    /// the measurements, so that memory and restarts can be measured from
    /// outside while the registry is full.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

/// The summary of a `scale` run.
#[derive(Debug, Serialize)]
pub struct ScaleReport {
    /// Always `scale`.
    pub workload: &'static str,
    /// Members registered by this run.
    pub registered: u64,
    /// Seconds the registrations took.
    pub register_s: f64,
    /// Members in the registry when measured.
    pub members: usize,
    /// Seconds for a linearizable list of every member.
    pub list_s: f64,
    /// Seconds from subscribing to holding the whole first snapshot.
    pub snapshot_s: f64,
}

impl fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scale")?;
        writeln!(
            f,
            "  registered  {} members in {:.2} s ({:.0}/s)",
            self.registered,
            self.register_s,
            self.registered as f64 / self.register_s.max(1e-9)
        )?;
        writeln!(f, "  registry    {} members", self.members)?;
        writeln!(
            f,
            "  list        {:.3} s (linearizable, everything)",
            self.list_s
        )?;
        writeln!(
            f,
            "  snapshot    {:.3} s (new subscription, whole first snapshot)",
            self.snapshot_s
        )
    }
}

/// Runs `scale` against `endpoints`.
pub async fn run(endpoints: &[String], args: &ScaleArgs) -> Result<ScaleReport> {
    let client = Client::connect(endpoints.iter().cloned())
        .await
        .context("connecting")?;
    let clients = args.clients.max(1);
    let per_session = args.members.div_ceil(clients);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let done = done.clone();
        let value = "x".repeat(args.value_bytes);
        let first = c * per_session;
        let last = ((c + 1) * per_session).min(args.members);
        tasks.push(tokio::spawn(async move {
            let session = client.open_session(SessionOptions::default()).await?;
            for i in first..last {
                let spec = MemberSpec::new(format!("scale-{i}"), "scale")
                    .locality("local.a")
                    .with_metadata(BTreeMap::from([("payload".to_owned(), value.clone())]));
                session.register(spec).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, fuddle_client::Error>(session)
        }));
    }
    let mut sessions = Vec::new();
    for task in tasks {
        sessions.push(task.await??);
    }
    let register_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (members, _) = client
        .list(Filter::all(), Consistency::Linearizable)
        .await?;
    let list_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut subscription = client.subscribe(Filter::all(), None).await?;
    let snapshot_s = match subscription.next().await {
        Some(Ok(Event::Snapshot { members: got, .. })) => {
            if got.len() < members.len() {
                bail!(
                    "the snapshot held {} members, the list {}",
                    got.len(),
                    members.len()
                );
            }
            started.elapsed().as_secs_f64()
        }
        other => bail!("expected a snapshot first, got {other:?}"),
    };
    let report = ScaleReport {
        workload: "scale",
        registered: done.load(Ordering::Relaxed),
        register_s,
        members: members.len(),
        list_s,
        snapshot_s,
    };
    if !args.hold.is_zero() {
        // The measurements come first, so that a script measuring from
        // outside while the sessions are held has them even if it stops
        // this run before the hold ends.
        eprint!("{report}");
        eprintln!("holding {} sessions for {:?}", sessions.len(), args.hold);
        tokio::time::sleep(args.hold).await;
    }
    drop(sessions);
    Ok(report)
}
