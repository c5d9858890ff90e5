//! One function per command, on top of the SDK.

mod cluster;
mod members;
mod register;
mod watch;

use std::io::{self, Write};

use anyhow::Result;
use fuddle_client::Client;

use crate::args::{Cli, ClusterCommand, Command, MembersCommand, NodeCommand};
use crate::output::{Format, Printer, printer};

/// What every command needs: where the cluster is and how to print.
pub struct Context {
    addrs: Vec<String>,
    format: Format,
    printer: Box<dyn Printer>,
}

impl Context {
    fn is_table(&self) -> bool {
        self.format == Format::Table
    }

    async fn connect(&self) -> Result<Client> {
        Ok(Client::connect(self.addrs.clone()).await?)
    }

    /// Prints a result on stdout and flushes it, for readers on a pipe.
    fn print(
        &self,
        write: impl FnOnce(&dyn Printer, &mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        let mut out = io::stdout().lock();
        write(self.printer.as_ref(), &mut out)?;
        out.flush()?;
        Ok(())
    }
}

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> Result<()> {
    let context = Context {
        addrs: cli.addr,
        format: cli.output,
        printer: printer(cli.output),
    };
    match cli.command {
        Command::Members(command) => match command {
            MembersCommand::List(args) => members::list(&context, args).await,
            MembersCommand::Get { id } => members::get(&context, &id).await,
            MembersCommand::Register(args) => register::run(&context, args).await,
            MembersCommand::Update(args) => members::update(&context, args).await,
            MembersCommand::Unregister { id } => members::unregister(&context, &id).await,
            MembersCommand::Watch(args) => watch::run(&context, args).await,
        },
        Command::Cluster(ClusterCommand::Status) => cluster::cluster_status(&context).await,
        Command::Node(NodeCommand::Status { node_id }) => {
            cluster::node_status(&context, node_id).await
        }
    }
}

/// Says which member was not found, whatever the node's wording.
fn member_error(err: fuddle_client::Error, id: &str) -> anyhow::Error {
    match err {
        fuddle_client::Error::NotFound(_) => anyhow::anyhow!("member {id:?} not found"),
        other => other.into(),
    }
}
