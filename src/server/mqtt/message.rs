//! An MQTT message as a log record, and back.
//!
//! | record part | holds |
//! |---|---|
//! | key | the MQTT topic name (so Kafka's partitioner keeps per-topic order) |
//! | value | the payload |
//! | header `mqtt.qos` | `0`, `1` or `2` as published |
//! | header `mqtt.retain` | `1` when the retain flag was set (absent otherwise) |
//! | header `mqtt.client` | the publishing client id (for the 5.0 No Local option) |
//! | header `mqtt.pkid` | a QoS 2 message's packet id (a resend after a restart is recognised) |
//! | headers `mqtt.content_type`, `mqtt.response_topic`, `mqtt.correlation_data`, `mqtt.payload_format` | 5.0 properties |
//! | header `mqtt.expiry` | 5.0 Message Expiry Interval in seconds, counted from the record's timestamp |
//! | any other header | a 5.0 user property (name and value as sent) |
//!
//! Text values are UTF-8; `mqtt.correlation_data` is the raw bytes.

use std::sync::Arc;

use bytes::Bytes;

use super::codec::{MessageProps, Publish};
use crate::log::{BatchBuilder, HeaderView, RecordView};

/// A message read from the log, shared by every session it is delivered to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogMessage {
    pub log_topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch, when it was appended.
    pub timestamp: i64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub publisher: Option<String>,
    pub props: MessageProps,
}

/// The longest client id accepted (MQTT requires 23 at least; AWS and Azure IoT stop at 128).
pub const MAX_CLIENT_ID: usize = 256;

/// The largest log batch (frame included) a PUBLISH of `max_packet` bytes can become: its
/// topic and payload as they are, plus the headers Brook adds (names such as `mqtt.qos`, and
/// the client id, at most [`MAX_CLIENT_ID`]), plus at most one byte in five for user
/// properties (5 bytes each at the least in MQTT, one more as a record header), plus the
/// record and batch framing.
pub fn batch_bound(max_packet: u64) -> u64 {
    max_packet + max_packet / 5 + 1024
}

/// Calls `f` with the record headers of `publish` from client `client_id`, borrowed from the
/// publish: a message's headers are encoded without an allocation (user properties aside).
fn with_headers<R>(
    publish: &Publish,
    client_id: &str,
    f: impl FnOnce(&[HeaderView<'_>]) -> R,
) -> R {
    const QOS: [[u8; 1]; 3] = [*b"0", *b"1", *b"2"];
    const DIGITS: [[u8; 1]; 10] = [
        *b"0", *b"1", *b"2", *b"3", *b"4", *b"5", *b"6", *b"7", *b"8", *b"9",
    ];
    let p = &publish.props;
    let view = |name, value| HeaderView {
        name,
        value: Some(value),
    };
    // A QoS 2 message's packet id, to recognise it resent after a broker restart
    // (Hub::stored_recently).
    let mut pkid = Decimal::default();
    let mut expiry = Decimal::default();
    let mut h = heapless::Vec::<HeaderView<'_>, FIXED_HEADERS>::new();
    let mut add = |hv| {
        // At most FIXED_HEADERS are added below.
        let _ = h.push(hv);
    };
    add(view("mqtt.qos", &QOS[usize::from(publish.qos.min(2))]));
    if publish.qos == 2 {
        add(view("mqtt.pkid", pkid.of(u64::from(publish.pkid))));
    }
    if publish.retain {
        add(view("mqtt.retain", b"1"));
    }
    if !client_id.is_empty() {
        add(view("mqtt.client", client_id.as_bytes()));
    }
    if let Some(v) = &p.content_type {
        add(view("mqtt.content_type", v.as_bytes()));
    }
    if let Some(v) = &p.response_topic {
        add(view("mqtt.response_topic", v.as_bytes()));
    }
    if let Some(v) = &p.correlation_data {
        add(view("mqtt.correlation_data", v));
    }
    if let Some(v) = p.payload_format {
        add(view("mqtt.payload_format", &DIGITS[usize::from(v.min(9))]));
    }
    if let Some(v) = p.expiry {
        add(view("mqtt.expiry", expiry.of(u64::from(v))));
    }
    if p.user.is_empty() {
        return f(&h);
    }
    let mut all = Vec::with_capacity(h.len() + p.user.len());
    all.extend_from_slice(&h);
    all.extend(p.user.iter().map(|(k, v)| view(k.as_str(), v.as_bytes())));
    f(&all)
}

/// The most headers [`with_headers`] adds besides user properties.
const FIXED_HEADERS: usize = 9;

/// A number's decimal digits, on the stack.
#[derive(Default)]
struct Decimal([u8; 20]);

impl Decimal {
    fn of(&mut self, mut n: u64) -> &[u8] {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return &self.0[i..];
            }
        }
    }
}

/// A one-record batch for `publish`, stamped `now_ms`.
pub fn batch(publish: &Publish, client_id: &str, now_ms: i64) -> BatchBuilder {
    let mut b = BatchBuilder::with_capacity(record_bound(publish));
    push(&mut b, publish, client_id, now_ms);
    b
}

/// Adds `publish` to `batch` as one record, stamped `now_ms`.
pub fn push(batch: &mut BatchBuilder, publish: &Publish, client_id: &str, now_ms: i64) {
    with_headers(publish, client_id, |headers| {
        batch.push_with(
            now_ms,
            Some(publish.topic.as_bytes()),
            Some(&publish.payload),
            headers,
        )
    });
}

/// About what `publish` takes as a record without user properties (to size buffers).
pub fn record_bound(publish: &Publish) -> usize {
    64 + publish.topic.len() + publish.payload.len()
}

fn text(v: &[u8]) -> Option<String> {
    std::str::from_utf8(v).ok().map(str::to_owned)
}

/// The message a record holds: `None` when its key is not a valid MQTT topic name (records
/// written by other protocols to an MQTT log topic without a topic key).
pub fn from_record(log_topic: &Arc<str>, partition: u32, r: &RecordView<'_>) -> Option<LogMessage> {
    let topic = std::str::from_utf8(r.key?).ok()?;
    crate::topic_filter::validate_name(topic).ok()?;
    let mut m = LogMessage {
        log_topic: Arc::clone(log_topic),
        partition,
        offset: r.offset,
        timestamp: r.timestamp,
        topic: topic.to_owned(),
        // MQTT has no null payload: a Kafka tombstone arrives empty.
        payload: Bytes::copy_from_slice(r.value_bytes()),
        qos: 0,
        retain: false,
        publisher: None,
        props: MessageProps::default(),
    };
    for h in &r.headers {
        let value = h.bytes();
        match h.name {
            "mqtt.qos" => m.qos = value.first().map_or(0, |b| b.saturating_sub(b'0').min(2)),
            "mqtt.retain" => m.retain = value == b"1",
            "mqtt.client" => m.publisher = text(value),
            "mqtt.content_type" => m.props.content_type = text(value),
            "mqtt.response_topic" => m.props.response_topic = text(value),
            "mqtt.correlation_data" => {
                m.props.correlation_data = Some(Bytes::copy_from_slice(value))
            }
            "mqtt.payload_format" => {
                m.props.payload_format = value.first().map(|b| b.saturating_sub(b'0'))
            }
            "mqtt.expiry" => {
                m.props.expiry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            name if name.starts_with("mqtt.") || name.starts_with("brook.") => {}
            name => {
                if let Some(v) = text(value) {
                    m.props.user.push((name.to_owned(), v));
                }
            }
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{BatchHeader, BatchView};

    #[test]
    fn publish_survives_the_log() {
        let publish = Publish {
            dup: false,
            qos: 1,
            retain: true,
            topic: "a/b".into(),
            pkid: 7,
            payload: Bytes::from_static(b"hello"),
            props: MessageProps {
                payload_format: Some(1),
                expiry: Some(30),
                topic_alias: None,
                response_topic: Some("reply/x".into()),
                correlation_data: Some(Bytes::from_static(&[0, 159, 1])),
                user: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                content_type: Some("text/plain".into()),
                subscription_ids: Vec::new(),
            },
        };
        let b = batch(&publish, "dev-1", 1234);
        let header = BatchHeader {
            base_offset: 41,
            record_count: b.count(),
            first_timestamp: b.first_timestamp(),
            max_timestamp: b.max_timestamp(),
            append_time: 0,
            attributes: 0,
        };
        let mut frame = Vec::new();
        crate::log::record::encode_frame(&mut frame, &header, b.layout(), b.records_bytes());
        let view = BatchView::parse(&frame).expect("valid frame");
        let rec = view.records().next().expect("one").expect("decodes");
        let topic: Arc<str> = Arc::from("mqtt");
        let m = from_record(&topic, 0, &rec).expect("a message");
        assert_eq!(m.offset, 41);
        assert_eq!(m.topic, "a/b");
        assert_eq!(m.payload, publish.payload);
        assert_eq!(m.qos, 1);
        assert!(m.retain);
        assert_eq!(m.publisher.as_deref(), Some("dev-1"));
        assert_eq!(m.props, publish.props);
    }

    #[test]
    fn numbers_in_headers_are_decimal() {
        let mut d = Decimal::default();
        assert_eq!(d.of(0), b"0");
        assert_eq!(d.of(7), b"7");
        assert_eq!(d.of(65_535), b"65535");
        assert_eq!(d.of(u64::MAX), u64::MAX.to_string().as_bytes());
        let publish = Publish {
            dup: false,
            qos: 2,
            retain: false,
            topic: "a".into(),
            pkid: 65_535,
            payload: Bytes::new(),
            props: MessageProps {
                expiry: Some(4_294_967_295),
                ..MessageProps::default()
            },
        };
        let got = with_headers(&publish, "", |h| {
            h.iter()
                .map(|h| (h.name.to_owned(), h.bytes().to_vec()))
                .collect::<Vec<_>>()
        });
        assert_eq!(
            got,
            [
                ("mqtt.qos".to_owned(), b"2".to_vec()),
                ("mqtt.pkid".to_owned(), b"65535".to_vec()),
                ("mqtt.expiry".to_owned(), b"4294967295".to_vec()),
            ]
        );
    }
}
