//! `members watch`: print every change as it happens until SIGINT or
//! SIGTERM.

use anyhow::{Result, anyhow};
use fuddle_client::Filter;

use super::Context;
use crate::args::WatchArgs;
use crate::signal::Shutdown;

pub async fn run(context: &Context, args: WatchArgs) -> Result<()> {
    let mut shutdown = Shutdown::install()?;
    let client = context.connect().await?;
    let filter = Filter {
        service: args.service.unwrap_or_default(),
        ..Filter::default()
    };
    let mut subscription = client.subscribe(filter, args.since_index).await?;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            event = subscription.next_event() => match event {
                Some(Ok(event)) => context.print(|printer, out| printer.event(out, &event))?,
                Some(Err(err)) => return Err(err.into()),
                None => return Err(anyhow!("the subscription ended")),
            },
        }
    }
}
