//! Writing the packets a server sends, for either version (reason codes mapped to 3.1.1 return
//! codes where 3.1.1 has them).

use bytes::{BufMut, BytesMut};

use super::{MessageProps, Out, Publish, Version};
use crate::units::Narrow;

pub(super) fn put_varint(out: &mut BytesMut, mut n: usize) {
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
