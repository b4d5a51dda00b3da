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
//! | byte | fixed header |
//! |---|---|
//! | 0 | packet type (high nibble), flags (low nibble; fixed per type except PUBLISH) |
//! | 1..=4 | remaining length, variable-length integer (7 bits per byte) |

use crate::units::Narrow;
use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes as m3;
use rumqttc::v5::mqttbytes as m5;

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

/// A framed packet: its fixed header's first byte and where the whole frame ends.
struct Frame {
    byte1: u8,
    header_len: usize,
    remaining: usize,
}

/// Frames the next packet in `buf`: `Ok(None)` when more bytes are needed.
fn frame(buf: &[u8], max: usize) -> Result<Option<Frame>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(CodecError::BadLength);
        }
    }
    let size = i + remaining;
    if size > max {
        return Err(CodecError::TooLarge { size, max });
    }
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some(Frame {
        byte1,
        header_len: i,
        remaining,
    }))
}

fn check_flags(byte1: u8) -> Result<(), CodecError> {
    let kind = byte1 >> 4;
    let flags = byte1 & 0x0f;
    let want = match kind {
        3 => return Ok(()), // PUBLISH: dup, qos, retain (qos 3 refused by the reader)
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != want {
        return Err(CodecError::ReservedFlags { kind, flags });
    }
    match kind {
        1 | 3 | 4 | 5 | 6 | 7 | 8 | 10 | 12 | 14 | 15 => Ok(()),
        _ => Err(CodecError::NotFromClient(kind)),
    }
}

fn malformed(e: impl std::fmt::Display) -> CodecError {
    CodecError::Malformed(e.to_string())
}

fn utf8(b: Bytes, what: &str) -> Result<String, CodecError> {
    String::from_utf8(b.to_vec()).map_err(|_| CodecError::Malformed(format!("{what} is not UTF-8")))
}

/// Reads the first packet of a connection, which must be CONNECT; picks the version from it.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Option<Connect>, CodecError> {
    let Some(f) = frame(buf, max)? else {
        return Ok(None);
    };
    if f.byte1 >> 4 != 1 {
        return Err(CodecError::NotConnect);
    }
    check_flags(f.byte1)?;
    // Variable header: protocol name (u16 length + bytes), then the level byte.
    let body = &buf[f.header_len..f.header_len + f.remaining];
    let name_len = body
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| malformed("CONNECT too short"))?;
    let name = body
        .get(2..2 + name_len)
        .ok_or_else(|| malformed("CONNECT too short"))?;
    let level = *body
        .get(2 + name_len)
        .ok_or_else(|| malformed("CONNECT too short"))?;
    let version = match (name, level) {
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::V5,
        _ => {
            return Err(CodecError::UnsupportedProtocol {
                name: String::from_utf8_lossy(name).into_owned(),
                level,
            });
        }
    };
    let mut frame_bytes = buf.split_to(f.header_len + f.remaining);
    let connect = match version {
        Version::V311 => match m3::v4::Packet::read(&mut frame_bytes, max).map_err(malformed)? {
            m3::v4::Packet::Connect(c) => from_v4_connect(c),
            _ => return Err(CodecError::NotConnect),
        },
        Version::V5 => {
            match m5::v5::Packet::read(&mut frame_bytes, Some(max.sat_u32())).map_err(malformed)? {
                m5::v5::Packet::Connect(c, will, login) => from_v5_connect(c, will, login)?,
                _ => return Err(CodecError::NotConnect),
            }
        }
    };
    Ok(Some(connect))
}

/// MQTT-2.3.1-1: packets that carry a packet identifier carry a non-zero one.
fn nonzero_id(p: Packet) -> Result<Packet, CodecError> {
    let id = match &p {
        Packet::PubAck(id) | Packet::PubRec(id, _) | Packet::PubRel(id) | Packet::PubComp(id) => {
            *id
        }
        Packet::Subscribe { pkid, .. } | Packet::Unsubscribe { pkid, .. } => *pkid,
        _ => return Ok(p),
    };
    if id == 0 {
        return Err(malformed("packet identifier 0"));
    }
    Ok(p)
}

/// Reads the next packet after CONNECT: `Ok(None)` when more bytes are needed.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, CodecError> {
    let Some(f) = frame(buf, max)? else {
        return Ok(None);
    };
    let kind = f.byte1 >> 4;
    if kind == 15 && version == Version::V5 {
        return Err(CodecError::Auth);
    }
    check_flags(f.byte1)?;
    if kind == 1 {
        return Err(CodecError::SecondConnect);
    }
    // DISCONNECT: 3.1.1 has no body; 5.0 may omit the reason code and the properties.
    if kind == 14 {
        let body = buf[f.header_len..f.header_len + f.remaining].to_vec();
        let mut frame_bytes = buf.split_to(f.header_len + f.remaining);
        return match (version, body.len()) {
            (_, 0) => Ok(Some(Packet::Disconnect {
                reason: 0,
                session_expiry: None,
            })),
            (Version::V311, _) => Err(malformed("DISCONNECT with a body under 3.1.1")),
            (Version::V5, 1) => Ok(Some(Packet::Disconnect {
                reason: body[0],
                session_expiry: None,
            })),
            (Version::V5, _) => {
                match m5::v5::Packet::read(&mut frame_bytes, Some(max.sat_u32()))
                    .map_err(malformed)?
                {
                    m5::v5::Packet::Disconnect(d) => Ok(Some(Packet::Disconnect {
                        reason: body[0],
                        session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
                    })),
                    _ => Err(malformed("DISCONNECT")),
                }
            }
        };
    }
    let mut frame_bytes = buf.split_to(f.header_len + f.remaining);
    let packet = match version {
        Version::V311 => from_v4(m3::v4::Packet::read(&mut frame_bytes, max).map_err(malformed)?)?,
        Version::V5 => from_v5(
            m5::v5::Packet::read(&mut frame_bytes, Some(max.sat_u32())).map_err(malformed)?,
        )?,
    };
    Ok(Some(nonzero_id(packet)?))
}

fn qos3(q: m3::QoS) -> u8 {
    q as u8
}

fn qos5(q: m5::QoS) -> u8 {
    q as u8
}

fn from_v4_connect(c: m3::v4::Connect) -> Connect {
    Connect {
        version: Version::V311,
        client_id: c.client_id,
        clean_start: c.clean_session,
        keep_alive: c.keep_alive,
        session_expiry: if c.clean_session { 0 } else { u32::MAX },
        receive_maximum: u16::MAX,
        max_packet_size: u32::MAX,
        topic_alias_max: 0,
        will: c.last_will.map(|w| Will {
            message: Publish {
                dup: false,
                qos: qos3(w.qos),
                retain: w.retain,
                topic: w.topic,
                pkid: 0,
                payload: w.message,
                props: MessageProps::default(),
            },
            delay: 0,
        }),
        username: c.login.as_ref().map(|l| l.username.clone()),
        password: c.login.map(|l| l.password),
    }
}

fn from_v5_connect(
    c: m5::v5::Connect,
    will: Option<m5::v5::LastWill>,
    login: Option<m5::v5::Login>,
) -> Result<Connect, CodecError> {
    let p = c.properties.unwrap_or_default();
    let will = match will {
        None => None,
        Some(w) => {
            let wp = w.properties;
            let wp = m5::v5::LastWillProperties {
                delay_interval: wp.as_ref().and_then(|p| p.delay_interval),
                payload_format_indicator: wp.as_ref().and_then(|p| p.payload_format_indicator),
                message_expiry_interval: wp.as_ref().and_then(|p| p.message_expiry_interval),
                content_type: wp.as_ref().and_then(|p| p.content_type.clone()),
                response_topic: wp.as_ref().and_then(|p| p.response_topic.clone()),
                correlation_data: wp.as_ref().and_then(|p| p.correlation_data.clone()),
                user_properties: wp.map(|p| p.user_properties).unwrap_or_default(),
            };
            Some(Will {
                delay: wp.delay_interval.unwrap_or(0),
                message: Publish {
                    dup: false,
                    pkid: 0,
                    topic: utf8(w.topic, "will topic")?,
                    payload: w.message,
                    qos: qos5(w.qos),
                    retain: w.retain,
                    props: MessageProps {
                        payload_format: wp.payload_format_indicator,
                        expiry: wp.message_expiry_interval,
                        topic_alias: None,
                        response_topic: wp.response_topic,
                        correlation_data: wp.correlation_data,
                        user: wp.user_properties,
                        content_type: wp.content_type,
                        subscription_ids: Vec::new(),
                    },
                },
            })
        }
    };
    if p.receive_maximum == Some(0) {
        return Err(malformed("Receive Maximum of 0"));
    }
    if p.max_packet_size == Some(0) {
        return Err(malformed("Maximum Packet Size of 0"));
    }
    if p.authentication_method.is_some() {
        return Err(CodecError::Auth);
    }
    Ok(Connect {
        version: Version::V5,
        client_id: c.client_id,
        clean_start: c.clean_start,
        keep_alive: c.keep_alive,
        session_expiry: p.session_expiry_interval.unwrap_or(0),
        receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
        max_packet_size: p.max_packet_size.unwrap_or(u32::MAX),
        topic_alias_max: p.topic_alias_max.unwrap_or(0),
        will,
        username: login.as_ref().map(|l| l.username.clone()),
        password: login.map(|l| l.password),
    })
}

fn from_v4(p: m3::v4::Packet) -> Result<Packet, CodecError> {
    use m3::v4::Packet as P;
    Ok(match p {
        P::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos3(p.qos),
            retain: p.retain,
            topic: p.topic,
            pkid: p.pkid,
            payload: p.payload,
            props: MessageProps::default(),
        }),
        P::PubAck(a) => Packet::PubAck(a.pkid),
        P::PubRec(a) => Packet::PubRec(a.pkid, true),
        P::PubRel(a) => Packet::PubRel(a.pkid),
        P::PubComp(a) => Packet::PubComp(a.pkid),
        P::Subscribe(s) => Packet::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubFilter {
                    filter: f.path,
                    qos: qos3(f.qos),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                })
                .collect(),
            subscription_id: None,
        },
        P::Unsubscribe(u) => {
            if u.topics.is_empty() {
                return Err(malformed("UNSUBSCRIBE without filters"));
            }
            Packet::Unsubscribe {
                pkid: u.pkid,
                filters: u.topics,
            }
        }
        P::PingReq => Packet::PingReq,
        P::Disconnect => Packet::Disconnect {
            reason: 0,
            session_expiry: None,
        },
        P::Connect(_) => return Err(CodecError::SecondConnect),
        P::ConnAck(_) | P::SubAck(_) | P::UnsubAck(_) | P::PingResp => {
            return Err(CodecError::NotFromClient(0));
        }
    })
}

fn from_v5(p: m5::v5::Packet) -> Result<Packet, CodecError> {
    use m5::v5::Packet as P;
    Ok(match p {
        P::Publish(p) => {
            let props = p.properties.unwrap_or_default();
            Packet::Publish(Publish {
                dup: p.dup,
                qos: qos5(p.qos),
                retain: p.retain,
                topic: utf8(p.topic, "topic name")?,
                pkid: p.pkid,
                payload: p.payload,
                props: MessageProps {
                    payload_format: props.payload_format_indicator,
                    expiry: props.message_expiry_interval,
                    topic_alias: props.topic_alias,
                    response_topic: props.response_topic,
                    correlation_data: props.correlation_data,
                    user: props.user_properties,
                    content_type: props.content_type,
                    subscription_ids: Vec::new(),
                },
            })
        }
        P::PubAck(a) => Packet::PubAck(a.pkid),
        P::PubRec(a) => Packet::PubRec(
            a.pkid,
            matches!(
                a.reason,
                m5::v5::PubRecReason::Success | m5::v5::PubRecReason::NoMatchingSubscribers
            ),
        ),
        P::PubRel(a) => Packet::PubRel(a.pkid),
        P::PubComp(a) => Packet::PubComp(a.pkid),
        P::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(malformed("SUBSCRIBE without filters"));
            }
            let subscription_id = s.properties.and_then(|p| p.id);
            if subscription_id == Some(0) {
                return Err(malformed("Subscription Identifier of 0"));
            }
            Packet::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubFilter {
                        filter: f.path,
                        qos: qos5(f.qos),
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: match f.retain_forward_rule {
                            m5::v5::RetainForwardRule::OnEverySubscribe => 0,
                            m5::v5::RetainForwardRule::OnNewSubscribe => 1,
                            m5::v5::RetainForwardRule::Never => 2,
                        },
                    })
                    .collect(),
                subscription_id,
            }
        }
        P::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(malformed("UNSUBSCRIBE without filters"));
            }
            Packet::Unsubscribe {
                pkid: u.pkid,
                filters: u.filters,
            }
        }
        P::PingReq(_) => Packet::PingReq,
        P::Disconnect(d) => Packet::Disconnect {
            reason: 0,
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        P::Auth(_) => return Err(CodecError::Auth),
        P::Connect(..) => return Err(CodecError::SecondConnect),
        P::ConnAck(_) | P::SubAck(_) | P::UnsubAck(_) | P::PingResp(_) => {
            return Err(CodecError::NotFromClient(0));
        }
    })
}

/// Reads `data` as one connection would (CONNECT first, then packets of its version) until
/// the bytes end or a packet is refused; every PUBLISH read is written back and must read back
/// the same. Exists so the fuzz target and its regression tests drive exactly what a
/// connection runs. Returns the packets read.
pub fn read_stream(data: &[u8], max: usize) -> Vec<Packet> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    let Ok(Some(connect)) = read_connect(&mut buf, max) else {
        return out;
    };
    let version = connect.version;
    out.push(Packet::Connect(Box::new(connect)));
    while let Ok(Some(p)) = read(version, &mut buf, max) {
        if let Packet::Publish(publish) = &p {
            let mut again = BytesMut::new();
            write(version, &Out::Publish(publish.clone()), &mut again);
            let back = read(version, &mut again, usize::MAX);
            assert!(
                matches!(&back, Ok(Some(Packet::Publish(b))) if b == publish),
                "PUBLISH did not survive write + read: {publish:?} -> {back:?}"
            );
        }
        out.push(p);
    }
    out
}

// ---- writing ----

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n & 0x7f).sat_u8();
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len().sat_u16());
    out.put_slice(s);
}

/// 5.0 properties, written into a scratch buffer first so their length can lead.
#[derive(Default)]
struct Props(BytesMut);

impl Props {
    fn u8(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.0.put_u8(id);
            self.0.put_u8(v);
        }
    }
    fn u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.0.put_u8(id);
            self.0.put_u16(v);
        }
    }
    fn u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.0.put_u8(id);
            self.0.put_u32(v);
        }
    }
    fn str(&mut self, id: u8, v: Option<&[u8]>) {
        if let Some(v) = v {
            self.0.put_u8(id);
            put_str(&mut self.0, v);
        }
    }
    fn len(&self) -> usize {
        varint_len(self.0.len()) + self.0.len()
    }
    fn put(&self, out: &mut BytesMut) {
        put_varint(out, self.0.len());
        out.put_slice(&self.0);
    }
}

fn message_props(p: &MessageProps) -> Props {
    let mut props = Props::default();
    props.u8(0x01, p.payload_format);
    props.u32(0x02, p.expiry);
    props.u16(0x23, p.topic_alias);
    props.str(0x08, p.response_topic.as_deref().map(str::as_bytes));
    props.str(0x09, p.correlation_data.as_deref());
    for (k, v) in &p.user {
        props.0.put_u8(0x26);
        put_str(&mut props.0, k.as_bytes());
        put_str(&mut props.0, v.as_bytes());
    }
    for id in &p.subscription_ids {
        props.0.put_u8(0x0B);
        put_varint(&mut props.0, *id);
    }
    props.str(0x03, p.content_type.as_deref().map(str::as_bytes));
    props
}

/// 3.1.1 CONNACK return code for a 5.0 reason code.
fn v311_connack_code(reason: u8) -> u8 {
    match reason {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x86 => 4,
        0x87 => 5,
        _ => 3,
    }
}

/// Bytes `out` takes once encoded for `version` (a PUBLISH is counted, not encoded).
pub fn encoded_len(version: Version, out: &Out) -> usize {
    if let Out::Publish(p) = out {
        return publish_len(version, p);
    }
    let mut buf = BytesMut::new();
    write(version, out, &mut buf);
    buf.len()
}

/// Bytes a PUBLISH takes once encoded for `version`.
pub fn publish_len(version: Version, p: &Publish) -> usize {
    let len = publish_body_len(version, p, None);
    1 + varint_len(len) + len
}

/// Remaining length of a PUBLISH (`props`: its 5.0 properties, when already built).
fn publish_body_len(version: Version, p: &Publish, props: Option<&Props>) -> usize {
    let props_len = match (version, props) {
        (Version::V311, _) => 0,
        (Version::V5, Some(props)) => props.len(),
        (Version::V5, None) => message_props(&p.props).len(),
    };
    2 + p.topic.len() + if p.qos > 0 { 2 } else { 0 } + props_len + p.payload.len()
}

/// Appends `out`, encoded for `version`, to `buf`.
pub fn write(version: Version, out: &Out, buf: &mut BytesMut) {
    let v5 = version == Version::V5;
    match out {
        Out::ConnAck(c) => {
            buf.put_u8(0x20);
            if !v5 {
                buf.put_u8(2);
                buf.put_u8(u8::from(c.session_present && c.reason == 0));
                buf.put_u8(v311_connack_code(c.reason));
                return;
            }
            let mut p = Props::default();
            p.u32(0x11, c.session_expiry);
            p.u16(0x21, c.receive_maximum);
            p.u32(0x27, c.max_packet_size);
            p.str(0x12, c.assigned_client_id.as_deref().map(str::as_bytes));
            p.u16(0x22, c.topic_alias_max);
            p.u16(0x13, c.server_keep_alive);
            p.str(0x1F, c.reason_string.as_deref().map(str::as_bytes));
            p.u8(0x28, Some(1)); // wildcard subscriptions available
            p.u8(0x29, Some(1)); // subscription identifiers available
            p.u8(0x2A, Some(1)); // shared subscriptions available
            put_varint(buf, 2 + p.len());
            buf.put_u8(u8::from(c.session_present && c.reason == 0));
            buf.put_u8(c.reason);
            p.put(buf);
        }
        Out::Publish(p) => {
            let props = v5.then(|| message_props(&p.props));
            let len = publish_body_len(version, p, props.as_ref());
            buf.reserve(len + 5);
            buf.put_u8(0x30 | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain));
            put_varint(buf, len);
            put_str(buf, p.topic.as_bytes());
            if p.qos > 0 {
                buf.put_u16(p.pkid);
            }
            if let Some(props) = props {
                props.put(buf);
            }
            buf.put_slice(&p.payload);
        }
        Out::PubAck(id, rc) | Out::PubRec(id, rc) | Out::PubRel(id, rc) | Out::PubComp(id, rc) => {
            let byte1 = match out {
                Out::PubAck(..) => 0x40,
                Out::PubRec(..) => 0x50,
                Out::PubRel(..) => 0x62,
                _ => 0x70,
            };
            buf.put_u8(byte1);
            if v5 && *rc != 0 {
                buf.put_u8(3);
                buf.put_u16(*id);
                buf.put_u8(*rc);
            } else {
                buf.put_u8(2);
                buf.put_u16(*id);
            }
        }
        Out::SubAck(id, codes) => {
            buf.put_u8(0x90);
            put_varint(buf, 2 + usize::from(v5) + codes.len());
            buf.put_u16(*id);
            if v5 {
                buf.put_u8(0);
            }
            for &c in codes {
                buf.put_u8(if v5 || c < 0x80 { c } else { 0x80 });
            }
        }
        Out::UnsubAck(id, codes) => {
            buf.put_u8(0xB0);
            if v5 {
                put_varint(buf, 3 + codes.len());
                buf.put_u16(*id);
                buf.put_u8(0);
                buf.put_slice(codes);
            } else {
                buf.put_u8(2);
                buf.put_u16(*id);
            }
        }
        Out::PingResp => {
            buf.put_u8(0xD0);
            buf.put_u8(0);
        }
        Out::Disconnect(rc) => {
            if v5 {
                buf.put_u8(0xE0);
                buf.put_u8(2);
                buf.put_u8(*rc);
                buf.put_u8(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
