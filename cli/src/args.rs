//! The command line, as clap parses it. The names are a contract with
//! scripts and operators (see the design's command-line contract).

use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use fuddle_client::{Consistency, MemberStatus};

use crate::output::Format;

/// Inspect and drive a Fuddle registry.
#[derive(Debug, Parser)]
#[command(name = "fuddle-cli", version)]
pub struct Cli {
    /// The nodes to talk to, as HOST:PORT; several separated by commas.
    #[arg(
        long,
        global = true,
        env = "FUDDLE_ADDR",
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_delimiter = ',',
        default_value = "127.0.0.1:8220",
        value_parser = parse_addr
    )]
    pub addr: Vec<String>,

    /// How to print results.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read, register and watch members.
    #[command(subcommand)]
    Members(MembersCommand),
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// One node.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// List the members matching a filter.
    List(ListArgs),
    /// Show one member.
    Get {
        /// The member's id.
        id: String,
    },
    /// Register a member and keep it alive until interrupted.
    Register(RegisterArgs),
    /// Set or remove metadata keys of a member.
    Update(UpdateArgs),
    /// Remove a member, whatever session owns it.
    Unregister {
        /// The member's id.
        id: String,
    },
    /// Print changes to the members as they happen, until interrupted.
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only members of this service (`*` globs allowed).
    #[arg(long)]
    pub service: Option<String>,
    /// Only members in this locality (`*` globs allowed).
    #[arg(long)]
    pub locality: Option<String>,
    /// Only members with this status.
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// How current the answer must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The member's id, unique in the cluster.
    #[arg(long)]
    pub id: String,
    /// The service the member belongs to.
    #[arg(long)]
    pub service: String,
    /// The member's locality, e.g. aws.us-east-1.us-east-1b.
    #[arg(long, default_value = "")]
    pub locality: String,
    /// The application's build revision.
    #[arg(long, default_value = "")]
    pub revision: String,
    /// A metadata pair; repeat for more.
    #[arg(long = "metadata", value_name = "K=V", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Mark the member down after this long without a heartbeat (e.g. 10s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Remove the member after this long down (e.g. 10m).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub reconnect_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["metadata", "remove"])))]
pub struct UpdateArgs {
    /// The member's id.
    pub id: String,
    /// A metadata pair to set; repeat for more.
    #[arg(long = "metadata", value_name = "K=V", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// A metadata key to remove; repeat for more.
    #[arg(long = "remove", value_name = "K")]
    pub remove: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only members of this service (`*` globs allowed).
    #[arg(long)]
    pub service: Option<String>,
    /// Start after this index instead of with a snapshot.
    #[arg(long, value_name = "N")]
    pub since_index: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the Raft view of the cluster.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Show one node's status.
    Status {
        /// The node's id; without it, the node the CLI is connected to.
        node_id: Option<u64>,
    },
}

/// A member status on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Up,
    Down,
}

impl From<StatusArg> for MemberStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Up => MemberStatus::Up,
            StatusArg::Down => MemberStatus::Down,
        }
    }
}

/// A read consistency on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(consistency: ConsistencyArg) -> Self {
        match consistency {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

/// Parses `KEY=VALUE`; the value may itself contain `=`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        Some(_) => Err(format!("the key is empty in {text:?}; expected KEY=VALUE")),
        None => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Checks one `HOST:PORT` address.
fn parse_addr(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bad = || format!("expected HOST:PORT, got {text:?}");
    // A full URL is passed through; the client checks it.
    if text.contains("://") {
        return Ok(text.to_owned());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;
    use crate::exit;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fuddle-cli").chain(args.iter().copied()))
    }

    fn register_args(cli: Cli) -> RegisterArgs {
        match cli.command {
            Command::Members(MembersCommand::Register(args)) => args,
            other => panic!("not a register command: {other:?}"),
        }
    }

    #[test]
    fn metadata_pairs_split_at_the_first_equals_sign() {
        let cli = parse(&[
            "members",
            "register",
            "--id",
            "a",
            "--service",
            "s",
            "--metadata",
            "url=http://x/?a=b",
            "--metadata",
            "empty=",
        ])
        .unwrap();
        let args = register_args(cli);
        assert_eq!(
            args.metadata,
            vec![
                ("url".into(), "http://x/?a=b".into()),
                ("empty".into(), String::new())
            ]
        );
    }

    #[test]
    fn metadata_without_equals_sign_is_bad_usage() {
        let err = parse(&[
            "members",
            "register",
            "--id",
            "a",
            "--service",
            "s",
            "--metadata",
            "novalue",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
        let err = parse(&["members", "update", "a", "--metadata", "=v"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn durations_are_human() {
        let cli = parse(&[
            "members",
            "register",
            "--id",
            "a",
            "--service",
            "s",
            "--heartbeat-timeout",
            "500ms",
            "--reconnect-timeout",
            "10m",
        ])
        .unwrap();
        let args = register_args(cli);
        assert_eq!(args.heartbeat_timeout, Some(Duration::from_millis(500)));
        assert_eq!(args.reconnect_timeout, Some(Duration::from_secs(600)));
        let cli = parse(&[
            "members",
            "register",
            "--id",
            "a",
            "--service",
            "s",
            "--heartbeat-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(
            register_args(cli).heartbeat_timeout,
            Some(Duration::from_secs(2))
        );
        let err = parse(&[
            "members",
            "register",
            "--id",
            "a",
            "--service",
            "s",
            "--heartbeat-timeout",
            "soon",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn addresses_default_and_split_on_commas() {
        let cli = parse(&["cluster", "status"]).unwrap();
        assert_eq!(cli.addr, ["127.0.0.1:8220"]);
        let cli = parse(&["--addr", "a:1,b:2", "cluster", "status"]).unwrap();
        assert_eq!(cli.addr, ["a:1", "b:2"]);
        let err = parse(&["--addr", "a:1,nope", "cluster", "status"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["members", "list", "-o", "json", "--addr", "h:9"]).unwrap();
        assert_eq!(cli.output, Format::Json);
        assert_eq!(cli.addr, ["h:9"]);
        let cli = parse(&["--output", "table", "node", "status", "3"]).unwrap();
        assert_eq!(cli.output, Format::Table);
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Status { node_id: Some(3) })
        ));
        assert!(parse(&["-o", "yaml", "cluster", "status"]).is_err());
    }

    #[test]
    fn list_filters_are_value_enums() {
        let cli = parse(&[
            "members",
            "list",
            "--status",
            "down",
            "--consistency",
            "stale",
            "--service",
            "web",
        ])
        .unwrap();
        let Command::Members(MembersCommand::List(args)) = cli.command else {
            panic!("not list")
        };
        assert_eq!(args.status, Some(StatusArg::Down));
        assert_eq!(args.consistency, ConsistencyArg::Stale);
        assert_eq!(args.service.as_deref(), Some("web"));
        let err = parse(&["members", "list", "--status", "sideways"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn update_needs_something_to_change() {
        let err = parse(&["members", "update", "a"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
        let cli = parse(&["members", "update", "a", "--remove", "k1", "--remove", "k2"]).unwrap();
        let Command::Members(MembersCommand::Update(args)) = cli.command else {
            panic!("not update")
        };
        assert_eq!(args.remove, ["k1", "k2"]);
        assert!(args.metadata.is_empty());
    }

    #[test]
    fn register_needs_id_and_service() {
        let err = parse(&["members", "register", "--id", "a"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn watch_takes_a_since_index() {
        let cli = parse(&["members", "watch", "--since-index", "42"]).unwrap();
        let Command::Members(MembersCommand::Watch(args)) = cli.command else {
            panic!("not watch")
        };
        assert_eq!(args.since_index, Some(42));
        assert!(parse(&["members", "watch", "--since-index", "-1"]).is_err());
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
