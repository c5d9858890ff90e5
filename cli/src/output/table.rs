//! Table output: aligned columns and key/value blocks for people.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use fuddle_client::{Change, ClusterStatus, Event, Member, NodeStatus};

use super::Printer;

pub struct Table;

/// Writes rows under headers, each column as wide as its widest cell and
/// two spaces apart; the last column is not padded.
fn columns(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&headers).chain(rows) {
        let mut text = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())?;
    }
    Ok(())
}

/// Writes `KEY  value` lines with the values aligned.
fn pairs(out: &mut dyn Write, pairs: &[(&str, String)]) -> io::Result<()> {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in pairs {
        writeln!(out, "{}", format!("{key:<width$}  {value}").trim_end())?;
    }
    Ok(())
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// A node id, where 0 means there is none (no leader).
fn node_id(id: u64) -> String {
    if id == 0 {
        "none".to_owned()
    } else {
        id.to_string()
    }
}

fn timestamp(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    format!("{} ({ms})", humantime::format_rfc3339_millis(time))
}

/// Metadata as `k=v` pairs; empty metadata shows as `-`.
fn metadata(member: &Member) -> String {
    if member.metadata.is_empty() {
        return "-".to_owned();
    }
    member
        .metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

impl Printer for Table {
    fn members(&self, out: &mut dyn Write, members: &[Member], _index: u64) -> io::Result<()> {
        let rows: Vec<Vec<String>> = members
            .iter()
            .map(|m| {
                vec![
                    m.id.clone(),
                    m.service.clone(),
                    or_dash(&m.locality),
                    or_dash(&m.revision),
                    m.status.to_string(),
                    m.mod_index.to_string(),
                ]
            })
            .collect();
        columns(
            out,
            &["ID", "SERVICE", "LOCALITY", "REVISION", "STATUS", "INDEX"],
            &rows,
        )
    }

    fn member(&self, out: &mut dyn Write, m: &Member) -> io::Result<()> {
        pairs(
            out,
            &[
                ("ID", m.id.clone()),
                ("SERVICE", m.service.clone()),
                ("LOCALITY", or_dash(&m.locality)),
                ("REVISION", or_dash(&m.revision)),
                ("STATUS", m.status.to_string()),
                ("CLIENT", m.client_id.clone()),
                ("CREATED", timestamp(m.created_ms)),
                ("CREATE INDEX", m.create_index.to_string()),
                ("MOD INDEX", m.mod_index.to_string()),
                ("METADATA", metadata(m)),
            ],
        )
    }

    fn registered(
        &self,
        _out: &mut dyn Write,
        note: &mut dyn Write,
        member: &Member,
        client_id: &str,
    ) -> io::Result<()> {
        writeln!(
            note,
            "registered {} (client {client_id}); heartbeating, Ctrl-C to stop",
            member.id
        )
    }

    fn unregistered(&self, out: &mut dyn Write, id: &str, index: u64) -> io::Result<()> {
        writeln!(out, "unregistered {id} at index {index}")
    }

    fn cluster_status(&self, out: &mut dyn Write, status: &ClusterStatus) -> io::Result<()> {
        writeln!(
            out,
            "leader: {}  term: {}",
            node_id(status.leader),
            status.term
        )?;
        let rows: Vec<Vec<String>> = status
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.to_string(),
                    n.addr.clone(),
                    n.role.clone(),
                    yes_no(n.voter),
                    n.last_log_index.to_string(),
                    n.applied_index.to_string(),
                    n.liveness.clone(),
                ]
            })
            .collect();
        columns(
            out,
            &[
                "ID", "ADDR", "ROLE", "VOTER", "LAST LOG", "APPLIED", "LIVENESS",
            ],
            &rows,
        )
    }

    fn node_status(&self, out: &mut dyn Write, s: &NodeStatus) -> io::Result<()> {
        let uptime = Duration::from_secs(s.uptime_ms / 1000);
        pairs(
            out,
            &[
                ("ID", s.node.id.to_string()),
                ("ADDR", s.node.addr.clone()),
                ("HTTP ADDR", or_dash(&s.node.http_addr)),
                ("ROLE", s.node.role.clone()),
                ("VOTER", yes_no(s.node.voter)),
                ("LIVENESS", or_dash(&s.node.liveness)),
                ("TERM", s.term.to_string()),
                ("LEADER", node_id(s.leader)),
                ("LAST LOG", s.node.last_log_index.to_string()),
                ("COMMITTED", s.committed_index.to_string()),
                ("APPLIED", s.node.applied_index.to_string()),
                ("SNAPSHOT", s.snapshot_index.to_string()),
                ("MEMBERS", s.members.to_string()),
                ("SESSIONS", s.sessions.to_string()),
                ("SUBSCRIBERS", s.subscribers.to_string()),
                ("UPTIME", humantime::format_duration(uptime).to_string()),
                ("VERSION", or_dash(&s.version)),
                ("DATA DIR", or_dash(&s.data_dir)),
            ],
        )
    }

    fn event(&self, out: &mut dyn Write, event: &Event) -> io::Result<()> {
        match event {
            Event::Snapshot { members, index } => {
                for m in members {
                    writeln!(out, "{index}  MEMBER {} {} {}", m.id, m.service, m.status)?;
                }
                writeln!(out, "snapshot at index {index}")
            }
            Event::Changes { index, changes } => {
                for change in changes {
                    match change {
                        Change::Upsert(m) => {
                            writeln!(out, "{index}  UPSERT {} {} {}", m.id, m.service, m.status)?
                        }
                        Change::Removed(id) => writeln!(out, "{index}  REMOVED {id}")?,
                    }
                }
                Ok(())
            }
            // Progress is for programs; a person watching gains nothing
            // from a line every few seconds.
            Event::Progress { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fuddle_client::{MemberStatus, NodeInfo};

    use super::*;

    fn member(id: &str, service: &str) -> Member {
        Member {
            id: id.into(),
            service: service.into(),
            locality: String::new(),
            revision: "v1".into(),
            created_ms: 0,
            metadata: BTreeMap::new(),
            status: MemberStatus::Up,
            client_id: "c".into(),
            create_index: 1,
            mod_index: 12,
        }
    }

    fn printed(print: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        print(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn member_columns_align() {
        let text =
            printed(|out| Table.members(out, &[member("a", "web"), member("longer-id", "db")], 3));
        assert_eq!(
            text,
            "ID         SERVICE  LOCALITY  REVISION  STATUS  INDEX\n\
             a          web      -         v1        up      12\n\
             longer-id  db       -         v1        up      12\n"
        );
    }

    #[test]
    fn cluster_status_has_a_header_line() {
        let status = ClusterStatus {
            leader: 0,
            term: 4,
            nodes: vec![NodeInfo {
                id: 1,
                addr: "127.0.0.1:8220".into(),
                role: "follower".into(),
                voter: true,
                liveness: "self".into(),
                ..Default::default()
            }],
            answered_by: 1,
        };
        let text = printed(|out| Table.cluster_status(out, &status));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leader: none  term: 4");
        assert_eq!(
            lines[1],
            "ID  ADDR            ROLE      VOTER  LAST LOG  APPLIED  LIVENESS"
        );
        assert_eq!(
            lines[2],
            "1   127.0.0.1:8220  follower  yes    0         0        self"
        );
    }

    #[test]
    fn watch_lines() {
        let text = printed(|out| {
            Table.event(
                out,
                &Event::Snapshot {
                    members: vec![member("a", "web")],
                    index: 7,
                },
            )?;
            Table.event(
                out,
                &Event::Changes {
                    index: 8,
                    changes: vec![
                        Change::Upsert(member("b", "web")),
                        Change::Removed("a".into()),
                    ],
                },
            )?;
            Table.event(out, &Event::Progress { index: 9 })
        });
        assert_eq!(
            text,
            "7  MEMBER a web up\nsnapshot at index 7\n8  UPSERT b web up\n8  REMOVED a\n"
        );
    }

    #[test]
    fn registration_note_goes_to_stderr() {
        let (mut out, mut note) = (Vec::new(), Vec::new());
        Table
            .registered(&mut out, &mut note, &member("a", "web"), "c9")
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(
            String::from_utf8(note).unwrap(),
            "registered a (client c9); heartbeating, Ctrl-C to stop\n"
        );
    }
}
