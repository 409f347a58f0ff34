//! The replication stream. The primary dials its standby (mutual TLS with the region's own
//! certificate, ALPN [`ALPN_STANDBY`]) and opens one bidirectional stream:
//!
//! ```text
//! primary → standby   Hello { region }
//! standby → primary   FromStandby::State { version, installing }
//! primary → standby   ToStandby::Group parts …            (groups after the standby's version)
//!                   | ToStandby::InstallBegin, Chunk …, InstallEnd, then groups
//!                   | ToStandby::Heartbeat                 (when nothing else was sent for a while)
//!                   | ToStandby::Handover { version }      (a planned failover: the last frame)
//! standby → primary   FromStandby::Applied { version }    (after each durable group or copy)
//!                   | FromStandby::Refused { reason }     (then the stream ends)
//!                   | FromStandby::Promoted { epoch }     (instead of the state, or after a
//!                                                          handover: the standby took over;
//!                                                          the primary is fenced)
//! ```
//!
//! Frames are length-delimited protobuf ([`relay_proto::frame`]) of at most
//! [`REPLICATION_FRAME_BYTES_MAX`](crate::limits::REPLICATION_FRAME_BYTES_MAX) bytes.

use fdb_layers::{CommittedGroup, Mutation};

use crate::limits::{GROUP_PART_BYTES, GROUP_PART_MUTATIONS_MAX};

/// The ALPN of replication links.
pub const ALPN_STANDBY: &[u8] = b"relay-standby/1";

/// (Primary → standby) the first frame: which region's store is shipped.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Hello {
    /// The region.
    #[prost(uint32, tag = "1")]
    pub region: u32,
    /// The primary acknowledges nothing the standby lacks (`when_standby_is_away =
    /// "refuse_writes"`): only then may the standby promote itself when the primary goes
    /// silent, since only then does it hold everything the primary acknowledged.
    #[prost(bool, tag = "2")]
    pub refuses_writes_alone: bool,
}

/// (Primary → standby) every frame after [`Hello`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ToStandby {
    /// What it carries.
    #[prost(oneof = "to_standby::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<to_standby::Kind>,
}

/// The kinds of [`ToStandby`].
pub mod to_standby {
    /// What a frame to the standby carries.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Kind {
        /// A part of a group commit.
        #[prost(message, tag = "1")]
        Group(super::GroupPart),
        /// A full copy read at `version` begins: everything the standby has is replaced.
        #[prost(uint64, tag = "2")]
        InstallBegin(u64),
        /// Pairs of the copy, in key order.
        #[prost(message, tag = "3")]
        InstallChunk(super::Pairs),
        /// The copy is whole.
        #[prost(bool, tag = "4")]
        InstallEnd(bool),
        /// The primary is alive (sent when it has shipped nothing for a while): the standby's
        /// lease on it is renewed by every frame.
        #[prost(bool, tag = "5")]
        Heartbeat(bool),
        /// The primary hands the region over (a planned failover) and sends nothing more: the
        /// standby takes over once its copy is at this version (the primary's newest: every
        /// group before this frame applied) and answers `Promoted` when it serves as the
        /// region, or `Refused`.
        #[prost(uint64, tag = "6")]
        Handover(u64),
    }
}

/// A part of a group commit; the standby applies the group when its last part arrives.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupPart {
    /// The store's version before the group.
    #[prost(uint64, tag = "1")]
    pub previous_version: u64,
    /// The group's version.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Mutations of this part, in order.
    #[prost(message, repeated, tag = "3")]
    pub mutations: Vec<WireMutation>,
    /// More parts of the same group follow.
    #[prost(bool, tag = "4")]
    pub more: bool,
}

/// One mutation: exactly one of the fields is set.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WireMutation {
    /// What it does.
    #[prost(oneof = "wire_mutation::Kind", tags = "1, 2, 3")]
    pub kind: Option<wire_mutation::Kind>,
}

/// The kinds of [`WireMutation`].
pub mod wire_mutation {
    /// What a mutation does.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Kind {
        /// Sets a key.
        #[prost(message, tag = "1")]
        Put(super::Pair),
        /// Removes a key.
        #[prost(bytes, tag = "2")]
        Remove(Vec<u8>),
        /// Removes a range: `key` is its first key, `value` the key after it.
        #[prost(message, tag = "3")]
        RemoveRange(super::Pair),
    }
}

/// A key and a value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pair {
    /// The key.
    #[prost(bytes, tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes, tag = "2")]
    pub value: Vec<u8>,
}

/// Pairs of a full copy.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pairs {
    /// In key order.
    #[prost(message, repeated, tag = "1")]
    pub pairs: Vec<Pair>,
}

/// (Standby → primary) every frame of the standby.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FromStandby {
    /// What it says.
    #[prost(oneof = "from_standby::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<from_standby::Kind>,
}

/// The kinds of [`FromStandby`].
pub mod from_standby {
    /// What the standby says.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Kind {
        /// What the standby's copy holds (the answer to [`super::Hello`]).
        #[prost(message, tag = "1")]
        State(super::StandbyState),
        /// The copy is durable at this version.
        #[prost(uint64, tag = "2")]
        Applied(u64),
        /// The standby refuses the stream, and says why.
        #[prost(string, tag = "3")]
        Refused(String),
        /// The standby was promoted at this failover epoch: the primary dialling it is stale
        /// and must stop serving (fenced).
        #[prost(uint64, tag = "4")]
        Promoted(u64),
    }
}

/// What a standby's copy holds.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct StandbyState {
    /// The version of its last group.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// A full copy was being installed and did not finish: the copy must be made again.
    #[prost(bool, tag = "2")]
    pub installing: bool,
}

/// Splits `group` into parts of at most [`GROUP_PART_BYTES`] bytes (after the mutation that
/// reaches it) and [`GROUP_PART_MUTATIONS_MAX`] mutations; a group without mutations is one
/// empty part.
pub fn group_parts(group: &CommittedGroup) -> Vec<GroupPart> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for mutation in &group.mutations {
        bytes += mutation.bytes();
        part.push(to_wire(mutation));
        if bytes >= GROUP_PART_BYTES || part.len() >= GROUP_PART_MUTATIONS_MAX {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
    }
    if !part.is_empty() || parts.is_empty() {
        parts.push(part);
    }
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(index, mutations)| GroupPart {
            previous_version: group.previous_version,
            version: group.version,
            mutations,
            more: index + 1 < count,
        })
        .collect()
}

fn to_wire(mutation: &Mutation) -> WireMutation {
    let kind = match mutation {
        Mutation::Put { key, value } => wire_mutation::Kind::Put(Pair {
            key: key.clone(),
            value: value.clone(),
        }),
        Mutation::Remove { key } => wire_mutation::Kind::Remove(key.clone()),
        Mutation::RemoveRange { begin, end } => wire_mutation::Kind::RemoveRange(Pair {
            key: begin.clone(),
            value: end.clone(),
        }),
    };
    WireMutation { kind: Some(kind) }
}

/// The mutation a wire mutation carries; `None` when it carries none (a malformed frame).
pub fn from_wire(mutation: WireMutation) -> Option<Mutation> {
    Some(match mutation.kind? {
        wire_mutation::Kind::Put(Pair { key, value }) => Mutation::Put { key, value },
        wire_mutation::Kind::Remove(key) => Mutation::Remove { key },
        wire_mutation::Kind::RemoveRange(Pair { key, value }) => Mutation::RemoveRange {
            begin: key,
            end: value,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_group_travels_in_parts_that_join_into_it() {
        let mutations: Vec<Mutation> = (0..3_000u32)
            .map(|index| match index % 3 {
                0 => Mutation::Put {
                    key: index.to_be_bytes().to_vec(),
                    value: vec![7; 4_000],
                },
                1 => Mutation::Remove {
                    key: index.to_be_bytes().to_vec(),
                },
                _ => Mutation::RemoveRange {
                    begin: vec![1],
                    end: vec![2],
                },
            })
            .collect();
        let group = CommittedGroup {
            previous_version: 4,
            version: 9,
            mutations,
        };
        let parts = group_parts(&group);
        assert!(parts.len() > 1);
        assert!(parts.iter().rev().skip(1).all(|part| part.more));
        assert!(!parts.last().expect("a part").more);
        let joined: Vec<Mutation> = parts
            .into_iter()
            .flat_map(|part| part.mutations)
            .map(|mutation| from_wire(mutation).expect("a mutation"))
            .collect();
        assert_eq!(joined, group.mutations);
        let empty = group_parts(&CommittedGroup::default());
        assert_eq!(empty.len(), 1);
        assert!(!empty[0].more);
    }
}
