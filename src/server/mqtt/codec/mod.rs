//! The one place MQTT bytes are read and written.
//!
//! Reading: this module frames each packet itself (fixed header, remaining length, size limit),
//! checks what rumqttc's `mqttbytes` leaves to a server (reserved flag bits, the packet types a
//! client may send, the short 5.0 DISCONNECT forms `e0 00` and `e0 01 rc`, AUTH), then hands
//! the exact frame to `mqttbytes`' 3.1.1 (`v4`) or 5.0 (`v5`) reader, chosen from the protocol
//! level byte of CONNECT, and converts the result into Brook's version-free [`Packet`].
//! Writing: the few packets a server sends ([`Out`]) are encoded here for either version,
//! with reason codes mapped to 3.1.1 return codes where 3.1.1 has them; the property tests
//! decode what this writes with `mqttbytes`' client-side readers.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the version-free packets ([`Packet`], [`Out`]) and errors |
//! | `decode.rs` | framing and reading what a client sends |
//! | `encode.rs` | writing what a server sends |
//!
//! | byte | fixed header |
//! |---|---|
//! | 0 | packet type (high nibble), flags (low nibble; fixed per type except PUBLISH) |
//! | 1..=4 | remaining length, variable-length integer (7 bits per byte) |

use bytes::Bytes;

mod decode;
mod encode;

pub use decode::{read, read_connect, read_stream};
pub use encode::{encoded_len, publish_len, write};

/// MQTT protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// Why bytes from a client were refused. Each closes that one connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed remaining length")]
    BadLength,
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("reserved flags {flags:#06b} on packet type {kind}")]
    ReservedFlags { kind: u8, flags: u8 },
    #[error("packet type {0} may not be sent by a client")]
    NotFromClient(u8),
    #[error("the first packet must be CONNECT")]
    NotConnect,
    #[error("second CONNECT on one connection")]
    SecondConnect,
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("AUTH (enhanced authentication) is not supported")]
    Auth,
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// MQTT 5 properties of a message (empty under 3.1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProps {
    pub payload_format: Option<u8>,
    pub expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub subscription_ids: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pkid: u16,
    pub payload: Bytes,
    pub props: MessageProps,
}

/// A will: the message (packet id 0), published when the connection is lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub message: Publish,
    /// 5.0 Will Delay Interval, seconds.
    pub delay: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    /// 3.1.1 clean session / 5.0 clean start.
    pub clean_start: bool,
    pub keep_alive: u16,
    /// 5.0 Session Expiry Interval (seconds); under 3.1.1 0 for clean sessions, else u32::MAX.
    pub session_expiry: u32,
    /// Unacknowledged QoS 1/2 messages the client accepts at once.
    pub receive_maximum: u16,
    /// Largest packet the client accepts.
    pub max_packet_size: u32,
    /// Topic aliases the client accepts from the server.
    pub topic_alias_max: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One filter of a SUBSCRIBE, with its 5.0 options (3.1.1: defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubFilter {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on subscribe; 1: only for a new subscription; 2: never.
    pub retain_handling: u8,
}

/// A packet from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    Publish(Publish),
    PubAck(u16),
    /// Packet id and whether the reason code is a success.
    PubRec(u16, bool),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<SubFilter>,
        subscription_id: Option<usize>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry: Option<u32>,
    },
}

/// CONNACK fields (properties are sent under 5.0 only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// 5.0 reason code; mapped to a 3.1.1 return code for 3.1.1 clients.
    pub reason: u8,
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub max_packet_size: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub topic_alias_max: Option<u16>,
    pub server_keep_alive: Option<u16>,
    pub reason_string: Option<String>,
}

/// A packet to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubRel(u16, u8),
    PubComp(u16, u8),
    SubAck(u16, Vec<u8>),
    UnsubAck(u16, Vec<u8>),
    PingResp,
    /// 5.0 only (a 3.1.1 server just closes).
    Disconnect(u8),
}

/// 5.0 reason codes Brook sends.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    pub const UNSUPPORTED_VERSION: u8 = 0x84;
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const BAD_AUTH_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
}

#[cfg(test)]
mod tests {
    use super::encode::put_varint;
    use super::*;
    use bytes::{BufMut, BytesMut};
    use proptest::prelude::*;
    use rumqttc::mqttbytes as m3;
    use rumqttc::v5::mqttbytes as m5;

    fn connect_bytes(level: u8, body_after_level: &[u8]) -> BytesMut {
        let mut v = vec![0, 4, b'M', b'Q', b'T', b'T', level];
        v.extend_from_slice(body_after_level);
        let mut b = BytesMut::new();
        b.put_u8(0x10);
        put_varint(&mut b, v.len());
        b.put_slice(&v);
        b
    }

    #[test]
    fn connect_picks_the_version() {
        // flags: clean; keep alive 60; client id "c1".
        let mut b = connect_bytes(4, &[0x02, 0, 60, 0, 2, b'c', b'1']);
        let c = read_connect(&mut b, 1024).expect("ok").expect("whole");
        assert_eq!(c.version, Version::V311);
        assert_eq!(c.client_id, "c1");
        assert!(c.clean_start);
        assert!(b.is_empty());
        // 5.0: properties length 5: session expiry 0x11 = 30.
        let mut b = connect_bytes(5, &[0x02, 0, 60, 5, 0x11, 0, 0, 0, 30, 0, 2, b'c', b'2']);
        let c = read_connect(&mut b, 1024).expect("ok").expect("whole");
        assert_eq!(c.version, Version::V5);
        assert_eq!(c.session_expiry, 30);
        assert_eq!(c.client_id, "c2");
    }

    #[test]
    fn refusals() {
        let mut b = connect_bytes(3, &[0x02, 0, 60, 0, 0]);
        assert!(matches!(
            read_connect(&mut b, 1024),
            Err(CodecError::UnsupportedProtocol { level: 3, .. })
        ));
        let mut b = BytesMut::from(&[0x30u8, 3, 0, 1, b'a'][..]);
        assert!(matches!(
            read_connect(&mut b, 1024),
            Err(CodecError::NotConnect)
        ));
        // SUBSCRIBE with flags 0 instead of 2.
        let mut b = BytesMut::from(&[0x80u8, 6, 0, 1, 0, 1, b'a', 0][..]);
        assert!(matches!(
            read(Version::V311, &mut b, 1024),
            Err(CodecError::ReservedFlags { kind: 8, .. })
        ));
        // Too large, before its bytes arrive.
        let mut b = BytesMut::from(&[0x30u8, 0xff, 0x7f][..]);
        assert!(matches!(
            read(Version::V311, &mut b, 1024),
            Err(CodecError::TooLarge { .. })
        ));
        // Five length bytes.
        let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            read(Version::V311, &mut b, usize::MAX),
            Err(CodecError::BadLength)
        ));
        // SUBSCRIBE with packet id 0.
        let mut b = BytesMut::from(&[0x82u8, 6, 0, 0, 0, 1, b'a', 0][..]);
        assert!(matches!(
            read(Version::V311, &mut b, 1024),
            Err(CodecError::Malformed(_))
        ));
        // CONNACK from a client.
        let mut b = BytesMut::from(&[0x20u8, 2, 0, 0][..]);
        assert!(matches!(
            read(Version::V311, &mut b, 1024),
            Err(CodecError::NotFromClient(2))
        ));
        // QoS 3.
        let mut b = BytesMut::from(&[0x36u8, 5, 0, 1, b'a', 0, 1][..]);
        assert!(read(Version::V311, &mut b, 1024).is_err());
    }

    #[test]
    fn short_v5_disconnects() {
        for (bytes, rc) in [(&[0xe0u8, 0][..], 0u8), (&[0xe0, 1, 0x04][..], 4)] {
            let mut b = BytesMut::from(bytes);
            match read(Version::V5, &mut b, 1024).expect("ok") {
                Some(Packet::Disconnect { reason, .. }) => assert_eq!(reason, rc),
                other => panic!("{other:?}"),
            }
        }
        let mut b = BytesMut::from(&[0xf0u8, 0][..]);
        assert!(matches!(
            read(Version::V5, &mut b, 1024),
            Err(CodecError::Auth)
        ));
    }

    #[test]
    fn partial_input_waits() {
        let full = [0x30u8, 5, 0, 1, b'a', b'h', b'i'];
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert!(read(Version::V311, &mut b, 1024).expect("ok").is_none());
            assert_eq!(b.len(), cut, "nothing consumed");
        }
    }

    /// The fuzz target's regression inputs (fuzz/regressions/mqtt_packet/) read as expected.
    #[test]
    fn fuzz_regressions() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/mqtt_packet");
        let read = |name: &str| {
            let bytes = std::fs::read(dir.join(name)).expect("regression file");
            read_stream(&bytes, 1 << 16)
        };
        let v311 = read("v311_session");
        assert_eq!(v311.len(), 5, "{v311:?}");
        assert!(matches!(&v311[1], Packet::Publish(p) if p.topic == "a/b" && p.qos == 1));
        let v5 = read("v5_session");
        assert_eq!(v5.len(), 5, "{v5:?}");
        assert!(
            matches!(&v5[1], Packet::Publish(p) if p.props.topic_alias == Some(1) && p.props.user.len() == 1)
        );
        assert!(matches!(v5[4], Packet::Disconnect { reason: 4, .. }));
        assert_eq!(read("v5_auth").len(), 1, "AUTH refused");
        assert_eq!(read("length_overflow").len(), 1);
        assert!(read("mqisdp").is_empty(), "MQTT 3.1 refused");
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            let _ = read_stream(&bytes, 1 << 16);
        }
    }

    fn props() -> impl Strategy<Value = MessageProps> {
        (
            proptest::option::of(0u8..2),
            proptest::option::of(any::<u32>()),
            proptest::option::of("[a-z/]{1,8}"),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::collection::vec(("[a-z]{1,4}", "[a-z]{0,4}"), 0..3),
            proptest::option::of("[a-z/]{1,8}"),
        )
            .prop_map(|(pf, exp, rt, cd, user, ct)| MessageProps {
                payload_format: pf,
                expiry: exp,
                topic_alias: None,
                response_topic: rt,
                correlation_data: cd.map(Bytes::from),
                user,
                content_type: ct,
                subscription_ids: Vec::new(),
            })
    }

    proptest! {
        /// What Brook writes, a client (rumqttc's readers) reads back unchanged.
        #[test]
        fn publish_roundtrips_through_the_client_reader(
            qos in 0u8..3, retain: bool, dup: bool, pkid in 1u16.., topic in "[a-z/]{1,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..300), p in props(),
        ) {
            let publish = Publish { dup: dup && qos > 0, qos, retain, topic, pkid: if qos > 0 { pkid } else { 0 }, payload: Bytes::from(payload), props: p };
            for version in [Version::V311, Version::V5] {
                let mut buf = BytesMut::new();
                write(version, &Out::Publish(publish.clone()), &mut buf);
                prop_assert_eq!(buf.len(), encoded_len(version, &Out::Publish(publish.clone())));
                let got = read(version, &mut buf, usize::MAX).expect("reads").expect("whole");
                let mut want = publish.clone();
                if version == Version::V311 {
                    want.props = MessageProps::default();
                }
                prop_assert_eq!(got, Packet::Publish(want));
                prop_assert!(buf.is_empty());
            }
        }

        #[test]
        fn acks_roundtrip(pkid in 1u16.., codes in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80), Just(0x8F)], 1..5)) {
            for version in [Version::V311, Version::V5] {
                let mut buf = BytesMut::new();
                write(version, &Out::SubAck(pkid, codes.clone()), &mut buf);
                write(version, &Out::PubAck(pkid, 0), &mut buf);
                write(version, &Out::ConnAck(ConnAck { session_present: true, reason: 0, assigned_client_id: Some("x".into()), receive_maximum: Some(10), ..ConnAck::default() }), &mut buf);
                match version {
                    Version::V311 => {
                        match m3::v4::Packet::read(&mut buf, usize::MAX).expect("suback") {
                            m3::v4::Packet::SubAck(s) => {
                                prop_assert_eq!(s.pkid, pkid);
                                prop_assert_eq!(s.return_codes.len(), codes.len());
                            }
                            other => prop_assert!(false, "{:?}", other),
                        }
                        prop_assert!(matches!(m3::v4::Packet::read(&mut buf, usize::MAX), Ok(m3::v4::Packet::PubAck(a)) if a.pkid == pkid));
                        prop_assert!(matches!(m3::v4::Packet::read(&mut buf, usize::MAX), Ok(m3::v4::Packet::ConnAck(c)) if c.session_present));
                    }
                    Version::V5 => {
                        match m5::v5::Packet::read(&mut buf, None).expect("suback") {
                            m5::v5::Packet::SubAck(s) => {
                                prop_assert_eq!(s.pkid, pkid);
                                prop_assert_eq!(s.return_codes.len(), codes.len());
                            }
                            other => prop_assert!(false, "{:?}", other),
                        }
                        prop_assert!(matches!(m5::v5::Packet::read(&mut buf, None), Ok(m5::v5::Packet::PubAck(a)) if a.pkid == pkid));
                        match m5::v5::Packet::read(&mut buf, None).expect("connack") {
                            m5::v5::Packet::ConnAck(c) => {
                                let p = c.properties.expect("props");
                                prop_assert_eq!(p.assigned_client_identifier.as_deref(), Some("x"));
                                prop_assert_eq!(p.receive_max, Some(10));
                            }
                            other => prop_assert!(false, "{:?}", other),
                        }
                    }
                }
                prop_assert!(buf.is_empty());
            }
        }

        /// Any bytes: an error or a packet, never a panic, and never a packet from a partial frame.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for version in [Version::V311, Version::V5] {
                let mut b = BytesMut::from(&bytes[..]);
                let _ = read_connect(&mut b, 256);
                let mut b = BytesMut::from(&bytes[..]);
                let _ = read(version, &mut b, 256);
            }
        }

        /// A valid CONNECT followed by any bytes (the reader past the handshake).
        #[test]
        fn arbitrary_packets_after_connect(v5: bool, bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut data = if v5 {
                vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 0]
            } else {
                vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0]
            };
            data.extend_from_slice(&bytes);
            let packets = read_stream(&data, 1 << 16);
            prop_assert!(!packets.is_empty(), "the CONNECT reads");
        }
    }
}
