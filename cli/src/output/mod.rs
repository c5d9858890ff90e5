//! Printing results: one printer per output format, behind one trait so
//! that commands do not care which is in use.

mod json;
mod table;

use std::io::{self, Write};

use clap::ValueEnum;
use fuddle_client::{ClusterStatus, Event, Member, NodeStatus};

/// The output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document (one object per line for `watch`) for programs.
    Json,
}

/// Prints each kind of result. Results go to `out` (stdout); notes for a
/// person go to `note` (stderr), so that stdout stays machine-readable.
pub trait Printer {
    fn members(&self, out: &mut dyn Write, members: &[Member], index: u64) -> io::Result<()>;
    fn member(&self, out: &mut dyn Write, member: &Member) -> io::Result<()>;
    fn registered(
        &self,
        out: &mut dyn Write,
        note: &mut dyn Write,
        member: &Member,
        client_id: &str,
    ) -> io::Result<()>;
    fn unregistered(&self, out: &mut dyn Write, id: &str, index: u64) -> io::Result<()>;
    fn cluster_status(&self, out: &mut dyn Write, status: &ClusterStatus) -> io::Result<()>;
    fn node_status(&self, out: &mut dyn Write, status: &NodeStatus) -> io::Result<()>;
    fn event(&self, out: &mut dyn Write, event: &Event) -> io::Result<()>;
}

/// The printer for a format.
pub fn printer(format: Format) -> Box<dyn Printer> {
    match format {
        Format::Table => Box::new(table::Table),
        Format::Json => Box::new(json::Json),
    }
}
