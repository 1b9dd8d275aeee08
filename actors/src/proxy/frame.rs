//! Proxy frames: length-prefixed rmp-serde, append-only.

use serde::{Deserialize, Serialize};

use crate::types::{Epoch, ShardId};

/// One message for an entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The entity type's wire id.
    pub entity: u64,
    /// The message type's wire id.
    pub message: u64,
    /// The shard of the key, as the sender computed it.
    pub shard: ShardId,
    /// The encoded key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The encoded message.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The shard's epoch in the sender's map (the fencing token): a receiver refuses a message
    /// stamped with an epoch older than the one it serves the shard at. `Epoch(0)`: not stamped.
    #[serde(default)]
    pub epoch: Epoch,
    /// For a follower of the shard, not its owner: a replica write from the shard's leader
    /// (`Sharded::send_to_replicas`), checked against the follower's map and fencing epoch.
    /// Not sent when false, so owner-bound frames are as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica: bool,
    /// The sender's W3C trace context (`traceparent`), so the receiver continues its trace.
    /// Appended: not sent when `None`, skipped by a build before it; a receiver ignores one
    /// that is not well-formed.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_trace")]
    pub trace: Option<String>,
}

/// A trace that is not text (bytes that are not UTF-8, from a broken or hostile sender) reads as
/// none: the message still goes through, untraced, instead of the frame failing to decode and
/// the peer being dropped. Anything else but a string is still a malformed frame.
fn lenient_trace<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a trace context string")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Text)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_owned()))
        }
        fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_option(Text)
}

pub use crate::types::Refusal;

/// A frame on a proxy stream. ONLY APPEND.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// A request; answered by a `Response` with the same id.
    Request {
        /// Request id, unique per stream direction.
        id: u64,
        /// The message.
        env: Envelope,
    },
    /// The answer to a request.
    Response {
        /// The request's id.
        id: u64,
        /// The encoded result, or why it was refused.
        result: Result<serde_bytes::ByteBuf, Refusal>,
    },
}

/// `Frame::Request` over a borrowed envelope: the same bytes, without copying key and payload
/// (the sender keeps the envelope for a retry).
#[derive(Serialize)]
pub(crate) enum RequestRef<'a> {
    Request { id: u64, env: &'a Envelope },
}

impl Frame {
    /// The frame with its 4-byte big-endian length prefix.
    pub fn encode(&self) -> Vec<u8> {
        length_prefixed(self)
    }
}

/// `msg` encoded with a 4-byte big-endian length prefix.
pub(crate) fn length_prefixed<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    crate::wire::encode_into(&mut out, msg);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn env_of(f: &Frame) -> Envelope {
        match f {
            Frame::Request { env, .. } => env.clone(),
            Frame::Response { .. } => unreachable!("a request"),
        }
    }

    /// The build before `trace` was appended: its envelope, so this build's frames can be shown
    /// to cross to it and back.
    mod prev {
        use serde::{Deserialize, Serialize};

        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub(super) struct Envelope {
            pub(super) entity: u64,
            pub(super) message: u64,
            pub(super) shard: crate::types::ShardId,
            #[serde(with = "serde_bytes")]
            pub(super) key: Vec<u8>,
            #[serde(with = "serde_bytes")]
            pub(super) payload: Vec<u8>,
            #[serde(default)]
            pub(super) epoch: crate::types::Epoch,
            #[serde(default, skip_serializing_if = "std::ops::Not::not")]
            pub(super) replica: bool,
        }

        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub(super) enum Frame {
            Request { id: u64, env: Envelope },
        }
    }

    #[test]
    fn an_appended_field_crosses_builds_both_ways() {
        let env = Envelope {
            entity: 1,
            message: 2,
            shard: ShardId(3),
            key: b"k".to_vec(),
            payload: vec![0x90],
            epoch: Epoch(7),
            replica: true,
            trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        // This build writes the trace; the build before skips it and reads the rest.
        let bytes = Frame::Request { id: 5, env: env.clone() }.encode();
        let prev::Frame::Request { id, env: old } = crate::wire::decode::<prev::Frame>(&bytes[4..]).unwrap();
        assert_eq!(
            (id, old.entity, old.message, old.shard, old.epoch, old.replica),
            (5, 1, 2, ShardId(3), Epoch(7), true)
        );
        assert_eq!((old.key.as_slice(), old.payload.as_slice()), (&b"k"[..], &[0x90][..]));
        // The build before writes no trace; this one reads `None`.
        let from_prev = length_prefixed(&prev::Frame::Request { id: 5, env: old.clone() });
        let Frame::Request { env: back, .. } = crate::wire::decode::<Frame>(&from_prev[4..]).unwrap() else {
            panic!("a request")
        };
        assert_eq!(back, Envelope { trace: None, ..env.clone() });
        // The trace round-trips here.
        assert_eq!(crate::wire::decode::<Frame>(&bytes[4..]).unwrap(), Frame::Request { id: 5, env: env.clone() });
        // The positional form (what `rmp_serde::to_vec` writes) would not cross: the mutation
        // this encoding exists to prevent.
        let positional = rmp_serde::to_vec(&Frame::Request { id: 5, env }).unwrap();
        assert!(crate::wire::decode::<prev::Frame>(&positional).is_err());
    }

    /// A trace whose bytes are not UTF-8 reads as none; the rest of the envelope is kept.
    #[test]
    fn a_trace_that_is_not_text_is_dropped_not_the_frame() {
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let env = Envelope {
            entity: 1,
            message: 2,
            shard: ShardId(3),
            key: b"k".to_vec(),
            payload: vec![0x90],
            epoch: Epoch(7),
            replica: false,
            trace: Some(trace.into()),
        };
        let mut bytes = crate::wire::encode(&Frame::Request { id: 5, env: env.clone() });
        let at = bytes.windows(trace.len()).position(|w| w == trace.as_bytes()).expect("the trace's bytes");
        bytes[at] = 0xff;
        let Frame::Request { env: got, .. } = crate::wire::decode::<Frame>(&bytes).expect("still decodes") else {
            panic!("a request")
        };
        assert_eq!(got, Envelope { trace: None, ..env });
        // A trace of another type is still a malformed frame.
        let mut wrong =
            crate::wire::encode(&Frame::Request { id: 5, env: Envelope { trace: Some("x".into()), ..got } });
        let x = wrong.iter().rposition(|b| *b == b'x').unwrap();
        wrong[x - 1] = 0x05; // the str marker of "x" becomes the integer 5, and "x" trails
        assert!(crate::wire::decode::<Frame>(&wrong).is_err());
    }

    #[test]
    fn round_trip_and_golden() {
        let f = Frame::Request {
            id: 7,
            env: Envelope {
                entity: 1,
                message: 2,
                shard: ShardId(3),
                key: b"k".to_vec(),
                payload: vec![0x90],
                epoch: Epoch(7),
                replica: false,
                trace: None,
            },
        };
        let bytes = f.encode();
        assert_eq!(u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
        assert_eq!(crate::wire::decode::<Frame>(&bytes[4..]).unwrap(), f);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0000004481a75265717565737482a2696407a3656e7686a6656e7469747901a76d65737361676502a5736861726403\
             a36b6579c4016ba77061796c6f6164c40190a565706f636807"
        );
        // The positional form earlier builds wrote still decodes.
        let positional = [
            0x81, 0xa7, b'R', b'e', b'q', b'u', b'e', b's', b't', 0x92, 0x07, 0x96, 1, 2, 3, 0xc4, 1, b'k', 0xc4, 1,
            0x90, 0x07,
        ];
        assert_eq!(crate::wire::decode::<Frame>(&positional).unwrap(), f);
        // A frame from before the epoch field decodes with `Epoch(0)` (not stamped).
        let old = [
            0x81, 0xa7, b'R', b'e', b'q', b'u', b'e', b's', b't', 0x92, 0x07, 0x95, 1, 2, 3, 0xc4, 1, b'k', 0xc4, 1,
            0x90,
        ];
        let Frame::Request { env, .. } = crate::wire::decode::<Frame>(&old).unwrap() else { panic!() };
        assert_eq!(env.epoch, Epoch(0));
        assert_eq!(length_prefixed(&RequestRef::Request { id: 7, env: &env_of(&f) }), bytes, "same bytes borrowed");
        let replica = Frame::Request { id: 8, env: Envelope { replica: true, ..env_of(&f) } };
        assert_eq!(crate::wire::decode::<Frame>(&replica.encode()[4..]).unwrap(), replica, "the flag round-trips");
        let r = Frame::Response {
            id: 7,
            result: Err(Refusal::NotOwner { shard: ShardId(3), epoch: Epoch(9), owner: Some(NodeId(1)) }),
        };
        assert_eq!(crate::wire::decode::<Frame>(&r.encode()[4..]).unwrap(), r);
    }
}
