//! `members register`: register a member and keep it alive in the
//! foreground until SIGINT or SIGTERM.

use std::io::{self, Write};

use anyhow::{Result, bail};
use fuddle_client::{MemberSpec, Session, SessionOptions};

use super::{Context, member_error};
use crate::args::RegisterArgs;
use crate::signal::Shutdown;

pub async fn run(context: &Context, args: RegisterArgs) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let client = context.connect().await?;
    let session = client
        .open_session(SessionOptions {
            heartbeat_timeout: args.heartbeat_timeout,
            reconnect_timeout: args.reconnect_timeout,
        })
        .await?;
    let spec = MemberSpec::new(&args.id, args.service)
        .locality(args.locality)
        .revision(args.revision)
        .with_metadata(args.metadata);
    let member = match session.register(spec).await {
        Ok(member) => member,
        Err(err) => {
            // Do not leave an empty session behind to time out.
            let _ = session.close().await;
            return Err(err.into());
        }
    };
    let client_id = session.client_id();
    context
        .print(|printer, out| printer.registered(out, &mut io::stderr(), &member, &client_id))?;

    // The session's background task heartbeats (and reconnects) meanwhile.
    shutdown.wait().await;

    // A second signal abandons a cleanup that hangs on an unreachable
    // cluster; the node then expires the session on its own.
    tokio::select! {
        cleaned = clean_up(session, &args.id) => cleaned?,
        _ = shutdown.wait() => bail!("interrupted before {} was unregistered; it expires with its session", args.id),
    }
    if context.is_table() {
        writeln!(io::stderr(), "unregistered {}; session closed", args.id)?;
    }
    Ok(())
}

/// Unregisters the member and closes the session.
async fn clean_up(session: Session, id: &str) -> Result<()> {
    let unregistered = match session.unregister(id).await {
        // Someone else removed it already: the goal is reached.
        Err(fuddle_client::Error::NotFound(_)) => Ok(()),
        other => other.map(|_| ()).map_err(|e| member_error(e, id)),
    };
    // Closing removes any member left, so it is tried even if the
    // unregister failed.
    let closed = session.close().await;
    unregistered?;
    closed?;
    Ok(())
}
