//! The gossip protocol (topic `clusterfunk/<key>/<env>/members`). ONLY APPEND.

use serde::{Deserialize, Serialize};

use crate::types::{ClusterName, NodeMeta};

/// A gossip message (topic `clusterfunk/<key>/<env>/members`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    /// A node announcing itself; sent every heartbeat interval.
    Heartbeat(Heartbeat),
}

/// A node's periodic announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's cluster; messages from another cluster are dropped and counted.
    pub cluster: ClusterName,
    /// The sender's metadata.
    pub meta: NodeMeta,
    /// Increases with every heartbeat of one process run.
    pub seq: u64,
    /// Random per process run: a restart is a new incarnation.
    pub incarnation: u64,
    /// The members (voters and learners) of the sender's Raft configuration. A node whose own
    /// configuration is older accepts Raft traffic from a peer one of its members lists here
    /// (docs/architecture.md §13): a lagging node learns of newer members from one it knows.
    #[serde(default)]
    pub raft_members: Vec<crate::types::NodeId>,
    /// The sender was started to create a new cluster and has not decided yet whether to
    /// (docs/architecture.md §8): of several such nodes that see each other, the lowest id does.
    #[serde(default)]
    pub bootstrapping: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;
    use crate::wire::{decode, encode};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn heartbeat() -> Gossip {
        Gossip::Heartbeat(Heartbeat {
            cluster: ClusterName::new("shop", "dev"),
            meta: NodeMeta {
                id: NodeId(1),
                peer_id: Some("12D3KooWCMQ8kvhesHFcJAmuMGijzh3aA9q6wkhEtB1XJLQZtjHF".parse().unwrap()),
                addrs: vec![],
                weight: 1,
                workers: 2,
                zone: None,
                dashboard: None,
                name: None,
                endpoints: Default::default(),
                metadata: Default::default(),
            },
            seq: 3,
            incarnation: 4,
            raft_members: vec![NodeId(1), NodeId(2)],
            bootstrapping: true,
        })
    }

    #[test]
    fn gossip_round_trip_and_golden() {
        let bytes = encode(&heartbeat());
        assert_eq!(decode::<Gossip>(&bytes).unwrap(), heartbeat());
        // Structs are maps keyed by field name; the peer id is its base58 text (`d9 34` + 52
        // bytes), as when the field was a String.
        assert_eq!(
            hex(&bytes),
            "81a948656172746265617486a7636c757374657282a36b6579a473686f70a3656e76a3646576a46d65746187a2696401a7\
             706565725f6964d934313244334b6f6f57434d51386b766865734846634a416d754d47696a7a68336141397136776b6845\
             744231584a4c515a746a4846a5616464727390a677656967687401a7776f726b65727302a47a6f6e65c0a964617368626f\
             617264c0a373657103ab696e6361726e6174696f6e04ac726166745f6d656d62657273920102ad626f6f74737472617070\
             696e67c3"
        );
        // The positional form earlier builds wrote (`raft_members` and `bootstrapping`, appended,
        // are the fifth and sixth elements: `96` ... `92 01 02 c3`) still decodes.
        let old =
            "81a94865617274626561749692a473686f70a36465769701d934313244334b6f6f57434d51386b766865734846634a416d754d\
                   47696a7a68336141397136776b6845744231584a4c515a746a4846900102c0c00304920102c3";
        let old: Vec<u8> = (0..old.len()).step_by(2).map(|i| u8::from_str_radix(&old[i..i + 2], 16).unwrap()).collect();
        assert_eq!(decode::<Gossip>(&old).unwrap(), heartbeat());
    }

    #[test]
    fn a_heartbeat_without_raft_members_still_decodes() {
        // The golden bytes of the version before `raft_members` was appended.
        let old =
            "81a94865617274626561749492a473686f70a36465769701d934313244334b6f6f57434d51386b766865734846634a416d754d\
                   47696a7a68336141397136776b6845744231584a4c515a746a4846900102c0c00304";
        let bytes: Vec<u8> =
            (0..old.len()).step_by(2).map(|i| u8::from_str_radix(&old[i..i + 2], 16).unwrap()).collect();
        let Gossip::Heartbeat(hb) = decode::<Gossip>(&bytes).unwrap();
        assert!(hb.raft_members.is_empty());
    }
}
