//! The one-shot member commands: list, get, update, unregister.

use std::collections::BTreeMap;

use anyhow::Result;
use fuddle_client::{Consistency, Filter};

use super::{Context, member_error};
use crate::args::{ListArgs, UpdateArgs};

pub async fn list(context: &Context, args: ListArgs) -> Result<()> {
    let filter = Filter {
        service: args.service.unwrap_or_default(),
        locality: args.locality.unwrap_or_default(),
        metadata: BTreeMap::new(),
        status: args.status.map(Into::into),
    };
    let client = context.connect().await?;
    let (members, index) = client.list(filter, args.consistency.into()).await?;
    context.print(|printer, out| printer.members(out, &members, index))
}

pub async fn get(context: &Context, id: &str) -> Result<()> {
    let client = context.connect().await?;
    let (member, _) = client
        .get(id, Consistency::Linearizable)
        .await
        .map_err(|e| member_error(e, id))?;
    context.print(|printer, out| printer.member(out, &member))
}

pub async fn update(context: &Context, args: UpdateArgs) -> Result<()> {
    let client = context.connect().await?;
    let set: BTreeMap<String, String> = args.metadata.into_iter().collect();
    let member = client
        .update_metadata(&args.id, set, args.remove)
        .await
        .map_err(|e| member_error(e, &args.id))?;
    context.print(|printer, out| printer.member(out, &member))
}

pub async fn unregister(context: &Context, id: &str) -> Result<()> {
    let client = context.connect().await?;
    let index = client
        .unregister(id)
        .await
        .map_err(|e| member_error(e, id))?;
    context.print(|printer, out| printer.unregistered(out, id, index))
}
