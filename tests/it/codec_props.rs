//! Round-trip and robustness properties of the batch frame and the segment index.

use brook::log::record::{
    BatchBuilder, BatchHeader, BatchView, Header, HeaderView, Record, RecordLayout, decode_all,
    encode_frame, encode_plain, frames_as_plain,
};
use brook::log::segment::{IndexEntry, SegmentIndex};
use proptest::prelude::*;

fn arb_record() -> impl Strategy<Value = Record> {
    (
        any::<i64>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        // Null values and null header values now and then (Kafka tombstones, null headers).
        proptest::option::weighted(0.9, proptest::collection::vec(any::<u8>(), 0..300)),
        proptest::collection::vec(
            (
                "[a-z.]{1,12}",
                proptest::option::weighted(0.9, proptest::collection::vec(any::<u8>(), 0..20)),
            ),
            0..4,
        ),
    )
        .prop_map(|(timestamp, key, value, headers)| Record {
            timestamp,
            key,
            value,
            headers: headers
                .into_iter()
                .map(|(name, value)| Header { name, value })
                .collect(),
        })
}

fn header(base: u64, count: u32, append_time: i64) -> BatchHeader {
    BatchHeader {
        base_offset: base,
        record_count: count,
        first_timestamp: 0,
        max_timestamp: 0,
        append_time,
        attributes: 0,
    }
}

fn frame_of(records: &[Record], base: u64, append_time: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push_record(r);
    }
    let mut h = header(base, b.count(), append_time);
    h.first_timestamp = b.first_timestamp();
    h.max_timestamp = b.max_timestamp();
    let mut out = Vec::new();
    let n = encode_frame(&mut out, &h, b.layout(), b.records_bytes());
    assert!(n <= b.frame_len_bound(), "frame bound is an upper bound");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn batch_round_trip(
        records in proptest::collection::vec(arb_record(), 1..20),
        base in 0u64..u64::MAX / 2,
        append_time in any::<i64>(),
    ) {
        let frame = frame_of(&records, base, append_time);
        let view = BatchView::parse(&frame).expect("parses");
        prop_assert_eq!(view.header.base_offset, base);
        prop_assert_eq!(view.header.append_time, append_time);
        prop_assert_eq!(view.header.record_count as usize, records.len());
        prop_assert_eq!(view.header.max_timestamp, records.iter().map(|r| r.timestamp).max().unwrap_or(0));
        let got: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
        for (i, (g, want)) in got.iter().zip(&records).enumerate() {
            prop_assert_eq!(g.offset, base + i as u64);
            prop_assert_eq!(&g.to_record(), want);
        }
        prop_assert_eq!(&decode_all(&frame).expect("decode_all"), &records);
        // The nullable layout only where a null needs it, so data without nulls reads anywhere.
        let nulls = records.iter().any(|r| r.value.is_none() || r.headers.iter().any(|h| h.value.is_none()));
        prop_assert_eq!(view.layout == RecordLayout::Nullable, nulls);
    }

    /// Headers handed over borrowed (as the MQTT listener does) encode to the same bytes as
    /// owned ones, in either layout.
    #[test]
    fn borrowed_headers_encode_as_owned_ones(records in proptest::collection::vec(arb_record(), 1..20)) {
        let (owned, borrowed) = owned_and_borrowed(&records);
        prop_assert_eq!(owned.layout(), borrowed.layout());
        prop_assert_eq!(owned.records_bytes(), borrowed.records_bytes());
    }

    /// A batch converted for a reader that predates nulls has the same header and records, with
    /// nulls read as empty; a plain batch is passed through untouched.
    #[test]
    fn plain_conversion_keeps_everything_but_nulls(
        records in proptest::collection::vec(arb_record(), 1..20),
        base in 0u64..u64::MAX / 2,
    ) {
        let frame = frame_of(&records, base, 5);
        let view = BatchView::parse(&frame).expect("parses");
        let mut plain = Vec::new();
        encode_plain(&mut plain, &view).expect("converts");
        let converted = BatchView::parse(&plain).expect("the conversion parses");
        prop_assert_eq!(converted.layout, RecordLayout::Plain);
        prop_assert_eq!(converted.header, view.header);
        let want: Vec<Record> = records
            .iter()
            .map(|r| Record {
                value: Some(r.value_bytes().to_vec()),
                headers: r.headers.iter().map(|h| Header::new(h.name.clone(), h.bytes())).collect(),
                ..r.clone()
            })
            .collect();
        prop_assert_eq!(decode_all(&plain).expect("decodes"), want);
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        match frames_as_plain(&two).expect("converts") {
            None => prop_assert_eq!(view.layout, RecordLayout::Plain),
            Some(both) => {
                prop_assert_eq!(view.layout, RecordLayout::Nullable);
                prop_assert_eq!(both.len(), 2 * plain.len());
            }
        }
    }

    /// Any single flipped bit in a frame is detected: the reader never returns different records.
    #[test]
    fn flipped_bit_is_detected(
        records in proptest::collection::vec(arb_record(), 1..5),
        bit in any::<proptest::sample::Index>(),
    ) {
        let mut frame = frame_of(&records, 7, 1);
        let i = bit.index(frame.len() * 8);
        frame[i / 8] ^= 1 << (i % 8);
        match decode_all(&frame) {
            Err(_) => {}
            Ok(got) => prop_assert!(false, "corruption went unnoticed: {got:?}"),
        }
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_all(&bytes);
        let _ = BatchView::parse(&bytes);
        let _ = SegmentIndex::decode(&bytes);
    }

    /// Truncating a frame anywhere gives `Incomplete` (or a length error), never records.
    #[test]
    fn truncated_frame_is_incomplete(
        records in proptest::collection::vec(arb_record(), 1..5),
        cut in any::<proptest::sample::Index>(),
    ) {
        let frame = frame_of(&records, 0, 0);
        let at = cut.index(frame.len());
        prop_assert!(BatchView::parse(&frame[..at]).is_err());
    }

    #[test]
    fn index_round_trip(
        base in any::<u64>(),
        entries in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<i64>()), 0..50),
        rest in (any::<u64>(), any::<u64>(), any::<i64>(), any::<i64>()),
    ) {
        let idx = SegmentIndex {
            base_offset: base,
            next_offset: rest.0,
            log_len: rest.1,
            max_timestamp: rest.2,
            max_append_time: rest.3,
            entries: entries
                .into_iter()
                .map(|(r, p, t)| IndexEntry { relative_offset: r, position: p, max_timestamp_before: t })
                .collect(),
        };
        prop_assert_eq!(SegmentIndex::decode(&idx.encode()), Ok(idx));
    }
}

/// The fuzz target's regression inputs (fuzz/regressions/) must still decode without panicking.
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/batch_decode");
    let entries = std::fs::read_dir(&dir).expect("fuzz/regressions/batch_decode exists");
    let mut n = 0;
    for e in entries {
        let bytes = std::fs::read(e.expect("entry").path()).expect("read seed");
        let _ = decode_all(&bytes);
        n += 1;
    }
    assert!(n > 0, "no regression seeds in {}", dir.display());
}

/// `fuzz/regressions/batch_decode/valid_nullable_record` was written by hand from the same table
/// (version 2: a null value and one header with a null value).
#[test]
fn documented_nullable_layout_decodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/batch_decode/valid_nullable_record");
    let bytes = std::fs::read(path).expect("seed");
    let view = BatchView::parse(&bytes).expect("the documented layout parses");
    assert_eq!(view.layout, RecordLayout::Nullable);
    assert_eq!(
        decode_all(&bytes).expect("decodes"),
        vec![Record {
            timestamp: 10,
            key: None,
            value: None,
            headers: vec![Header::null("h")]
        }]
    );
    assert_reencodes(&bytes);
}

/// `records` pushed with owned headers, and again with borrowed ones.
fn owned_and_borrowed(records: &[Record]) -> (BatchBuilder, BatchBuilder) {
    let mut owned = BatchBuilder::new();
    let mut borrowed = BatchBuilder::new();
    for r in records {
        owned.push_record(r);
        let views: Vec<HeaderView<'_>> = r
            .headers
            .iter()
            .map(|h| HeaderView {
                name: &h.name,
                value: h.value.as_deref(),
            })
            .collect();
        borrowed.push_with(r.timestamp, r.key.as_deref(), r.value.as_deref(), &views);
    }
    (owned, borrowed)
}

/// `frame` encoded again from its records, with owned headers and with borrowed ones, is the
/// same bytes: the encoders write the documented layout, not merely one their decoder reads.
fn assert_reencodes(frame: &[u8]) {
    let view = BatchView::parse(frame).expect("parses");
    let (owned, borrowed) = owned_and_borrowed(&decode_all(frame).expect("decodes"));
    for b in [owned, borrowed] {
        let mut out = Vec::new();
        encode_frame(&mut out, &view.header, b.layout(), b.records_bytes());
        assert_eq!(out, frame);
    }
}

/// `fuzz/regressions/batch_decode/valid_one_record` was written by hand from the byte table in
/// the `log` module docs (not by Brook): the docs and the code must agree on it.
#[test]
fn documented_layout_decodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/batch_decode/valid_one_record");
    let bytes = std::fs::read(path).expect("seed");
    let view = BatchView::parse(&bytes).expect("the documented layout parses");
    assert_eq!(view.header.base_offset, 5);
    assert_eq!(view.header.append_time, 99);
    let records = decode_all(&bytes).expect("decodes");
    assert_eq!(
        records,
        vec![Record {
            timestamp: 10,
            key: None,
            value: Some(b"abc".to_vec()),
            headers: vec![]
        }]
    );
    assert_reencodes(&bytes);
}
