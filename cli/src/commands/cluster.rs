//! `cluster status` and `node status`.

use anyhow::Result;

use super::Context;

pub async fn cluster_status(context: &Context) -> Result<()> {
    let client = context.connect().await?;
    let status = client.cluster_status().await?;
    context.print(|printer, out| printer.cluster_status(out, &status))
}

pub async fn node_status(context: &Context, node_id: Option<u64>) -> Result<()> {
    let client = context.connect().await?;
    let status = client
        .node_status(node_id)
        .await
        .map_err(|err| match (err, node_id) {
            (fuddle_client::Error::NotFound(_), Some(id)) => anyhow::anyhow!("node {id} not found"),
            (err, _) => err.into(),
        })?;
    context.print(|printer, out| printer.node_status(out, &status))
}
