//! Produce, Fetch, ListOffsets and InitProducerId.
//!
//! Produce: each partition's data must be exactly one v2 batch (as Kafka requires); it is
//! checked ([`records`]), its sequence checked for idempotent producers
//! ([`producers`](super::producers)), and appended to that partition as one Brook batch,
//! in request order. The answer waits for the durability `acks` asks for.
//!
//! Fetch: every partition is read from its offset (whole batches, up to the partition's and
//! the request's byte limits, at least one batch when there is one); while the total is under
//! `min_bytes` the fetch waits, up to `max_wait_ms`, for any of its partitions to grow.
//! Batches go out as uncompressed Kafka batches with their Brook offsets. Fetch sessions
//! (KIP-227) are not kept: the answer's session id 0 makes clients send full fetches.

use super::KafkaError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;

use super::admin::{code_of, s};
use super::codec::{self, err};
use super::producers::{Seq, SeqCheck};
use super::records::{self, RecordsError};
use super::{Answer, Ctx, Started};
use crate::auth::{Op, Principal};
use crate::broker::BrokerError;
use crate::log::{AppendTicket, Durability, LogError, PartitionChoice};
use crate::proto::OffsetSpec;
use crate::units::Narrow;

/// One partition's produce outcome before durability.
enum Outcome {
    Waiting(AppendTicket),
    Done {
        code: i16,
        base_offset: i64,
        message: Option<String>,
    },
}

fn failed(code: i16, message: impl Into<String>) -> Outcome {
    Outcome::Done {
        code,
        base_offset: -1,
        message: Some(message.into()),
    }
}

fn records_error(e: &RecordsError) -> Outcome {
    failed(
        if e.is_corrupt() {
            err::CORRUPT_MESSAGE
        } else {
            err::INVALID_RECORD
        },
        e.to_string(),
    )
}

/// Checks and appends one partition's data.
fn produce_partition(
    ctx: &Ctx,
    topic: &str,
    partition: i32,
    data: Option<&Bytes>,
    durability: Durability,
) -> Outcome {
    let Ok(partition) = u32::try_from(partition) else {
        return failed(err::UNKNOWN_TOPIC_OR_PARTITION, "negative partition");
    };
    let Some(data) = data else {
        return failed(err::INVALID_RECORD, "no records");
    };
    let batches = match records::split_batches(data) {
        Ok(b) => b,
        Err(e) => return records_error(&e),
    };
    let [one] = batches.as_slice() else {
        return failed(
            err::INVALID_RECORD,
            format!("{} record batches; exactly one is accepted", batches.len()),
        );
    };
    // Decompression stops at twice the topic's batch bound (Kafka's record encoding is a
    // little larger than Brook's): a small batch inflating to far more is refused early.
    let limit = match ctx.broker.topic(topic) {
        Ok(t) => (t.config().max_batch_size.bytes().sat_usize()).saturating_mul(2),
        Err(e) => return failed(code_of(&e), e.to_string()),
    };
    let parsed = match records::parse_batch_within(one, limit) {
        Ok(p) => p,
        Err(e) => return records_error(&e),
    };
    let seq = Seq {
        producer_id: parsed.producer_id,
        epoch: parsed.producer_epoch,
        base: parsed.base_sequence,
        count: parsed.record_count(),
    };
    match ctx.producers.check(topic, partition, seq) {
        SeqCheck::Append => {}
        SeqCheck::Duplicate { base_offset } => {
            ctx.stats
                .duplicate_batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Outcome::Done {
                code: err::NONE,
                base_offset: base_offset as i64,
                message: None,
            };
        }
        SeqCheck::OutOfOrder { expected } => {
            return failed(
                err::OUT_OF_ORDER_SEQUENCE_NUMBER,
                format!("sequence {} where {expected} was expected", seq.base),
            );
        }
        SeqCheck::StaleEpoch { current } => {
            return failed(
                err::INVALID_PRODUCER_EPOCH,
                format!("epoch {} is older than {current}", seq.epoch),
            );
        }
    }
    match ctx.broker.produce_start(
        topic,
        PartitionChoice::Id(partition),
        &parsed.batch,
        durability,
    ) {
        Ok((_, ticket)) => {
            let a = ticket.appended();
            ctx.producers.record(topic, partition, seq, a.base_offset);
            Outcome::Waiting(ticket)
        }
        Err(e) => failed(code_of(&e), e.to_string()),
    }
}

pub fn produce(
    ctx: &Arc<Ctx>,
    who: &Principal,
    r: ProduceRequest,
    version: i16,
    id: i32,
) -> Result<Started, KafkaError> {
    let durability = match r.acks {
        0 => Some(Durability::None),
        1 => Some(Durability::Written),
        -1 => Some(Durability::Durable),
        _ => None,
    };
    let mut outcomes: Vec<(TopicName, Vec<(i32, Outcome)>)> = Vec::new();
    for t in &r.topic_data {
        let topic = t.name.0.to_string();
        let allowed = who.allows(Op::Produce(&topic));
        let parts = t
            .partition_data
            .iter()
            .map(|p| {
                let o = if !allowed {
                    failed(
                        err::TOPIC_AUTHORIZATION_FAILED,
                        format!("user {:?} may not produce to {topic:?}", who.name()),
                    )
                } else if r.transactional_id.is_some() {
                    failed(err::INVALID_REQUEST, "transactions are not supported")
                } else {
                    match durability {
                        Some(d) => produce_partition(ctx, &topic, p.index, p.records.as_ref(), d),
                        None => failed(
                            err::INVALID_REQUIRED_ACKS,
                            format!("acks = {}: use 0, 1 or -1", r.acks),
                        ),
                    }
                };
                (p.index, o)
            })
            .collect();
        outcomes.push((t.name.clone(), parts));
    }
    if r.acks == 0 {
        // No answer, as the protocol says; failures are logged.
        for (t, parts) in &outcomes {
            for (p, o) in parts {
                if let Outcome::Done {
                    message: Some(m), ..
                } = o
                {
                    tracing::warn!(topic = %t.0.as_str(), partition = p, "acks=0 produce refused: {m}");
                }
            }
        }
        return Ok(Started::Now(None));
    }
    Ok(Started::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(outcomes.len());
        for (name, parts) in outcomes {
            let mut partition_responses = Vec::with_capacity(parts.len());
            for (index, o) in parts {
                let mut append_time = -1;
                let (code, base, message) = match o {
                    Outcome::Waiting(t) => match t.finish().await {
                        Ok(a) => {
                            append_time = a.log_append_time.unwrap_or(-1);
                            (err::NONE, a.base_offset as i64, None)
                        }
                        Err(e) => {
                            let e = BrokerError::Log(e);
                            (code_of(&e), -1, Some(e.to_string()))
                        }
                    },
                    Outcome::Done {
                        code,
                        base_offset,
                        message,
                    } => (code, base_offset, message),
                };
                partition_responses.push(
                    PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(code)
                        .with_base_offset(base)
                        .with_log_append_time_ms(append_time)
                        .with_error_message(message.map(s)),
                );
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(partition_responses),
            );
        }
        let resp = ProduceResponse::default().with_responses(responses);
        codec::response(ApiKey::Produce, version, id, &resp).map(Some)
    })))
}

/// One partition of a fetch, read once.
struct Read {
    topic: usize,
    data: PartitionData,
}

async fn read_partition(
    ctx: &Ctx,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
) -> (PartitionData, usize) {
    let pd = PartitionData::default().with_partition_index(partition);
    let (Ok(p), Ok(offset)) = (u32::try_from(partition), u64::try_from(offset)) else {
        return (pd.with_error_code(err::OFFSET_OUT_OF_RANGE), 0);
    };
    // Offsets lost to corruption are skipped, as a compacted topic's gaps are: Kafka clients
    // move on to the next batch they are given (the loss is logged and on /healthz).
    let mut offset = offset;
    let mut fetched = ctx
        .broker
        .fetch(topic, p, offset, max_bytes, 0, Duration::ZERO)
        .await;
    for _ in 0..16 {
        let Err(BrokerError::Log(LogError::DataLost { first, next, .. })) = &fetched else {
            break;
        };
        tracing::warn!(
            topic,
            partition,
            "fetch at offset {offset}: offsets {first}..{next} were lost to corruption; serving from {next}"
        );
        offset = *next;
        fetched = ctx
            .broker
            .fetch(topic, p, offset, max_bytes, 0, Duration::ZERO)
            .await;
    }
    match fetched {
        Ok(r) => {
            let mut out = Vec::with_capacity(r.frames.len() + r.frames.len() / 4);
            for b in r.batches() {
                if let Err(e) = records::encode_batch(&mut out, &b) {
                    tracing::error!(topic, partition, "stored batch unreadable: {e}");
                    break;
                }
            }
            let n = out.len();
            let hw = r.high_watermark as i64;
            (
                pd.with_high_watermark(hw)
                    .with_last_stable_offset(hw)
                    .with_log_start_offset(r.log_start as i64)
                    .with_records(Some(Bytes::from(out))),
                n,
            )
        }
        Err(e) => {
            let (start, end) = match &e {
                BrokerError::Log(LogError::OffsetOutOfRange {
                    earliest, latest, ..
                }) => (*earliest as i64, *latest as i64),
                _ => (-1, -1),
            };
            (
                pd.with_error_code(code_of(&e))
                    .with_high_watermark(end)
                    .with_log_start_offset(start),
                0,
            )
        }
    }
}

pub fn fetch(ctx: Arc<Ctx>, who: &Principal, r: FetchRequest, version: i16, id: i32) -> Answer {
    let allowed: Vec<bool> = r
        .topics
        .iter()
        .map(|t| who.allows(Op::Consume(t.topic.0.as_str())))
        .collect();
    Box::pin(async move {
        let max_wait = Duration::from_millis(r.max_wait_ms.clamp(0, 60_000) as u64);
        let deadline = tokio::time::Instant::now() + max_wait;
        let total_max = if r.max_bytes <= 0 {
            usize::MAX
        } else {
            r.max_bytes as usize
        };
        let min_bytes = r.min_bytes.max(0) as usize;
        loop {
            // Watch every partition's end before reading, so growth in between is not missed.
            let mut watches = tokio::task::JoinSet::new();
            for t in r.topics.iter().zip(&allowed).filter(|x| *x.1).map(|x| x.0) {
                if let Ok(topic) = ctx.broker.topic(t.topic.0.as_str()) {
                    for p in &t.partitions {
                        if let Ok(part) = topic.partition(p.partition.max(0) as u32) {
                            let mut rx = part.watch_end();
                            rx.borrow_and_update();
                            watches.spawn(async move {
                                let _ = rx.changed().await;
                            });
                        }
                    }
                }
            }
            let mut reads: Vec<Read> = Vec::new();
            let mut total = 0usize;
            for (ti, t) in r.topics.iter().enumerate() {
                for p in &t.partitions {
                    let budget = if total == 0 {
                        // The first data may exceed the limit (one whole batch at least).
                        (p.partition_max_bytes.max(1) as usize).min(total_max)
                    } else {
                        (p.partition_max_bytes.max(0) as usize).min(total_max.saturating_sub(total))
                    };
                    let (data, n) = if !allowed[ti] {
                        (
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_error_code(err::TOPIC_AUTHORIZATION_FAILED)
                                .with_high_watermark(-1),
                            0,
                        )
                    } else if budget == 0 {
                        (
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_records(Some(Bytes::new())),
                            0,
                        )
                    } else {
                        read_partition(
                            &ctx,
                            t.topic.0.as_str(),
                            p.partition,
                            p.fetch_offset,
                            budget,
                        )
                        .await
                    };
                    total += n;
                    reads.push(Read { topic: ti, data });
                }
            }
            let errors = reads.iter().any(|x| x.data.error_code != err::NONE);
            let enough = total >= min_bytes.max(1) || errors;
            if enough || tokio::time::Instant::now() >= deadline || watches.is_empty() {
                watches.abort_all();
                let mut responses: Vec<FetchableTopicResponse> = r
                    .topics
                    .iter()
                    .map(|t| FetchableTopicResponse::default().with_topic(t.topic.clone()))
                    .collect();
                for x in reads {
                    responses[x.topic].partitions.push(x.data);
                }
                let resp = FetchResponse::default()
                    .with_session_id(0)
                    .with_responses(responses);
                return codec::response(ApiKey::Fetch, version, id, &resp).map(Some);
            }
            // Wait for any partition to grow, or the deadline.
            let _ = tokio::time::timeout_at(deadline, watches.join_next()).await;
            watches.abort_all();
        }
    })
}

pub fn list_offsets(
    ctx: &Ctx,
    who: &Principal,
    r: ListOffsetsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let allowed = who.allows(Op::Consume(name));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    if !allowed {
                        return out.with_error_code(err::TOPIC_AUTHORIZATION_FAILED);
                    }
                    let Ok(part) = u32::try_from(p.partition_index) else {
                        return out.with_error_code(err::UNKNOWN_TOPIC_OR_PARTITION);
                    };
                    // -2 earliest, -1 latest (timestamp -1, as Kafka answers); a time or -3
                    // (MAX_TIMESTAMP): the record found, with its own timestamp.
                    let spec = match p.timestamp {
                        // -4: earliest local (KIP-405; every record is local here).
                        -2 | -4 => OffsetSpec::Earliest,
                        -1 => OffsetSpec::Latest,
                        // -5 (latest tiered) and other special values: nothing to find.
                        ts if ts < -3 => return out,
                        ts => {
                            let ts = (ts != -3).then_some(ts);
                            return match ctx.broker.record_for_timestamp(name, part, ts) {
                                Ok(Some((offset, ts))) => {
                                    out.with_offset(offset as i64).with_timestamp(ts)
                                }
                                Ok(None) => out,
                                Err(e) => out.with_error_code(code_of(&e)),
                            };
                        }
                    };
                    match ctx.broker.list_offsets(name, part, spec) {
                        Ok((_, _, answer)) => out.with_offset(answer.map_or(-1, |o| o as i64)),
                        Err(e) => out.with_error_code(code_of(&e)),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let resp = ListOffsetsResponse::default().with_topics(topics);
    codec::response(ApiKey::ListOffsets, version, id, &resp)
}

pub fn init_producer_id(
    ctx: &Ctx,
    r: InitProducerIdRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let resp = if r.transactional_id.is_some() {
        InitProducerIdResponse::default()
            .with_error_code(err::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    } else if r.producer_id.0 >= 0 && r.producer_epoch >= 0 && r.producer_epoch < i16::MAX {
        // A producer bumping its epoch after an error (KIP-360) keeps its id.
        InitProducerIdResponse::default()
            .with_producer_id(r.producer_id)
            .with_producer_epoch(r.producer_epoch + 1)
    } else {
        match ctx.producers.allocate(ctx.broker.meta()) {
            Ok(pid) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::error!("cannot allocate a producer id: {e}");
                InitProducerIdResponse::default()
                    .with_error_code(err::KAFKA_STORAGE_ERROR)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        }
    };
    codec::response(ApiKey::InitProducerId, version, id, &resp)
}

/// DeleteRecords (`admin`): each partition's records before the given offset (-1: its end)
/// go; the answer is the new low watermark.
pub fn delete_records(
    ctx: &Ctx,
    who: &Principal,
    r: DeleteRecordsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    use kafka_protocol::messages::delete_records_response::{
        DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
    };
    let admin = who.allows(Op::Admin);
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1);
                    if !admin {
                        return out.with_error_code(err::TOPIC_AUTHORIZATION_FAILED);
                    }
                    let (Ok(part), offset) = (u32::try_from(p.partition_index), p.offset) else {
                        return out.with_error_code(err::UNKNOWN_TOPIC_OR_PARTITION);
                    };
                    let upto = match offset {
                        -1 => None,
                        o => match u64::try_from(o) {
                            Ok(o) => Some(o),
                            Err(_) => return out.with_error_code(err::OFFSET_OUT_OF_RANGE),
                        },
                    };
                    match ctx.broker.delete_records(name, part, upto) {
                        Ok(low) => {
                            tracing::info!(
                                topic = name,
                                partition = part,
                                low_watermark = low,
                                "records deleted by a Kafka client"
                            );
                            out.with_low_watermark(low as i64)
                        }
                        Err(e) => out.with_error_code(code_of(&e)),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let resp = DeleteRecordsResponse::default().with_topics(topics);
    codec::response(ApiKey::DeleteRecords, version, id, &resp)
}
