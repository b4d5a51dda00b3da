//! Reading what a client sends: framing, the checks `mqttbytes` leaves to a server, and the
//! conversion into Brook's version-free packets.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m3;
use rumqttc::v5::mqttbytes as m5;

use super::{
    CodecError, Connect, MessageProps, Out, Packet, Publish, SubFilter, Version, Will, write,
};
use crate::units::Narrow;

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
