//! ApiVersions, Metadata, CreateTopics, DeleteTopics, DescribeConfigs, FindCoordinator.
//!
//! Brook is a one-node cluster (node 0, cluster id `brook`) leading every partition with no
//! replicas. Topic configs map to Kafka's names: `retention.ms` (-1: none), `retention.bytes`
//! (-1: none), `segment.bytes`, `max.message.bytes`, `cleanup.policy` (`delete`, `compact`,
//! `compact,delete`), `delete.retention.ms`, `message.timestamp.type`, Brook's own
//! `brook.on_full` (`drop_oldest` or `reject`), and the replication settings one node already
//! satisfies; CreateTopics refuses any other key with INVALID_CONFIG naming it, and a
//! replication factor other than 1 (or -1: default).

use super::KafkaError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::Ctx;
use super::codec::{self, err};
use crate::auth::{Op, Principal};
use crate::broker::BrokerError;
use crate::log::{LogError, OnFull, TopicConfig};
use crate::proto::TopicSettings;
use crate::units::Narrow;

pub(super) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// The Kafka error code of a broker error.
pub(super) fn code_of(e: &BrokerError) -> i16 {
    match e {
        BrokerError::Log(l) => match l {
            LogError::UnknownTopic(_) | LogError::UnknownPartition { .. } => {
                err::UNKNOWN_TOPIC_OR_PARTITION
            }
            LogError::TopicExists(_) => err::TOPIC_ALREADY_EXISTS,
            LogError::InvalidTopicName { .. } => err::INVALID_TOPIC_EXCEPTION,
            LogError::InvalidTopicConfig { .. } | LogError::BudgetTooSmall { .. } => {
                err::INVALID_CONFIG
            }
            LogError::OffsetOutOfRange { .. } => err::OFFSET_OUT_OF_RANGE,
            LogError::InvalidBatch(_) => err::CORRUPT_MESSAGE,
            LogError::BatchTooLarge { .. } => err::MESSAGE_TOO_LARGE,
            LogError::TooMany { .. } => err::POLICY_VIOLATION,
            _ => err::KAFKA_STORAGE_ERROR,
        },
        BrokerError::Invalid(_) => err::INVALID_REQUEST,
        _ => err::UNKNOWN_SERVER_ERROR,
    }
}

fn api_list() -> Vec<ApiVersion> {
    codec::SUPPORTED
        .iter()
        .map(|&(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect()
}

pub fn api_versions(version: i16, id: i32) -> Result<Vec<u8>, KafkaError> {
    let r = ApiVersionsResponse::default()
        .with_error_code(err::NONE)
        .with_api_keys(api_list());
    codec::response(ApiKey::ApiVersions, version, id, &r)
}

/// The v0 answer to an ApiVersions of a version Brook does not know.
pub fn api_versions_unsupported(id: i32) -> Result<Vec<u8>, KafkaError> {
    let r = ApiVersionsResponse::default()
        .with_error_code(err::UNSUPPORTED_VERSION)
        .with_api_keys(api_list());
    codec::response(ApiKey::ApiVersions, 0, id, &r)
}

fn topic_entry(ctx: &Ctx, name: &str) -> MetadataResponseTopic {
    let t = MetadataResponseTopic::default().with_name(Some(TopicName(s(name))));
    match ctx.broker.topic(name) {
        Ok(topic) => t.with_partitions(
            topic
                .partitions()
                .iter()
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p.id() as i32)
                        .with_leader_id(BrokerId(0))
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![BrokerId(0)])
                        .with_isr_nodes(vec![BrokerId(0)])
                })
                .collect(),
        ),
        Err(e) => t.with_error_code(code_of(&e)),
    }
}

/// `listener`: 0 plain, 1 TLS (the address the answer names).
pub fn metadata(
    ctx: &Ctx,
    who: &Principal,
    listener: usize,
    r: MetadataRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    // v0: an empty list means every topic; v1+: null does. A listing holds only the topics
    // the client may describe; a named one it may not is answered TOPIC_AUTHORIZATION_FAILED.
    let names: Vec<String> = match &r.topics {
        Some(ts) if !(version == 0 && ts.is_empty()) => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect(),
        _ => ctx
            .broker
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| who.allows(Op::Describe(n)))
            .collect(),
    };
    let auto = ctx.config.auto_create_topics && (version < 4 || r.allow_auto_topic_creation);
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        if !who.allows(Op::Describe(&name)) {
            topics.push(
                MetadataResponseTopic::default()
                    .with_name(Some(TopicName(s(&name))))
                    .with_error_code(err::TOPIC_AUTHORIZATION_FAILED),
            );
            continue;
        }
        // Creating a topic on the fly takes the right to produce to it (or admin).
        let may_create = who.allows(Op::Produce(&name)) || who.allows(Op::Admin);
        if auto && may_create && ctx.broker.topic(&name).is_err() {
            match ctx.broker.create_topic(&name, &TopicSettings::default()) {
                Ok(_) => tracing::info!(topic = %name, "topic created for a Kafka client"),
                Err(BrokerError::Log(LogError::TopicExists(_))) => {}
                Err(e) => {
                    tracing::warn!(topic = %name, "cannot create topic for a Kafka client: {e}");
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_name(Some(TopicName(s(&name))))
                            .with_error_code(code_of(&e)),
                    );
                    continue;
                }
            }
        }
        topics.push(topic_entry(ctx, &name));
    }
    let resp = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(0))
                .with_host(s(&ctx.advertised[listener].0))
                .with_port(ctx.advertised[listener].1),
        ])
        .with_cluster_id(Some(s("brook")))
        .with_controller_id(BrokerId(0))
        .with_topics(topics);
    codec::response(ApiKey::Metadata, version, id, &resp)
}

/// Topic settings from CreateTopics' configs; `Err((code, message))` names the bad key.
/// A topic's configs as a Kafka client gives them: what the native settings carry, and the
/// per-topic batch limit (`max.message.bytes`).
#[derive(Debug, Default)]
struct KafkaTopicConfigs {
    settings: TopicSettings,
    max_message_bytes: Option<u64>,
    timestamp_type: Option<crate::log::TimestampType>,
    cleanup: Option<crate::log::Cleanup>,
    delete_retention_ms: Option<u64>,
}

impl std::ops::Deref for KafkaTopicConfigs {
    type Target = TopicSettings;
    fn deref(&self) -> &TopicSettings {
        &self.settings
    }
}

impl KafkaTopicConfigs {
    /// The topic's config: the server's defaults with these applied.
    fn topic_config(&self, broker: &crate::broker::Broker) -> TopicConfig {
        let mut cfg = broker.topic_config(&self.settings);
        if let Some(m) = self.max_message_bytes {
            cfg.max_batch_size = crate::units::ByteSize(m);
        }
        if let Some(t) = self.timestamp_type {
            cfg.timestamp_type = t;
        }
        if let Some(c) = self.cleanup {
            cfg.cleanup = c;
        }
        if let Some(ms) = self.delete_retention_ms {
            cfg.delete_retention = crate::units::HumanDuration::millis(ms);
        }
        cfg
    }
}

fn settings(
    partitions: i32,
    replication: i16,
    configs: &[(String, Option<String>)],
) -> Result<KafkaTopicConfigs, (i16, String)> {
    let mut out = KafkaTopicConfigs::default();
    let st = &mut out.settings;
    match partitions {
        -1 => {}
        p if p >= 1 => st.partitions = Some(p as u32),
        p => return Err((err::INVALID_PARTITIONS, format!("{p} partitions"))),
    }
    if replication != -1 && replication != 1 {
        return Err((
            err::INVALID_REPLICATION_FACTOR,
            format!("replication factor {replication}: Brook is one node, use 1"),
        ));
    }
    for (k, v) in configs {
        let v = v.as_deref().unwrap_or("");
        let bad = |what: &str| (err::INVALID_CONFIG, format!("{k} = {v:?}: {what}"));
        let num = || v.parse::<i64>().map_err(|_| bad("not a number"));
        match k.as_str() {
            "retention.ms" => {
                st.retention_ms = Some(match num()? {
                    -1 => 0, // no limit
                    n if n > 0 => n as u64,
                    _ => return Err(bad("must be -1 or positive")),
                })
            }
            "retention.bytes" => {
                st.retention_bytes = Some(match num()? {
                    -1 => 0, // no limit
                    n if n > 0 => n as u64,
                    _ => return Err(bad("must be -1 or positive")),
                })
            }
            "segment.bytes" => {
                st.segment_bytes = Some(u64::try_from(num()?).map_err(|_| bad("negative"))?)
            }
            "cleanup.policy" => {
                use crate::log::Cleanup;
                let mut parts: Vec<&str> = v.split(',').map(str::trim).collect();
                parts.sort_unstable();
                out.cleanup = Some(match parts[..] {
                    ["delete"] => Cleanup::Delete,
                    ["compact"] => Cleanup::Compact,
                    ["compact", "delete"] => Cleanup::CompactDelete,
                    _ => {
                        return Err(bad("must be \"delete\", \"compact\" or \"compact,delete\""));
                    }
                })
            }
            "max.message.bytes" => {
                out.max_message_bytes = Some(match num()? {
                    n if n > 0 => n as u64,
                    _ => return Err(bad("must be positive")),
                })
            }
            // Meaningful for compacted topics only; accepted as Kafka does for others.
            "delete.retention.ms" => {
                out.delete_retention_ms =
                    Some(u64::try_from(num()?).map_err(|_| bad("must be 0 or more"))?)
            }
            // What one node already does.
            "min.insync.replicas" if v == "1" => {}
            "min.insync.replicas" => return Err(bad("Brook is one node: only 1")),
            "unclean.leader.election.enable" if v == "true" || v == "false" => {}
            "unclean.leader.election.enable" => return Err(bad("must be true or false")),
            "compression.type" if v == "producer" || v == "uncompressed" => {}
            "compression.type" => {
                return Err(bad(
                    "Brook stores records uncompressed: only \"producer\" or \"uncompressed\"",
                ));
            }
            "message.timestamp.type" => {
                out.timestamp_type = Some(match v {
                    "CreateTime" => crate::log::TimestampType::Create,
                    "LogAppendTime" => crate::log::TimestampType::LogAppend,
                    _ => return Err(bad("must be \"CreateTime\" or \"LogAppendTime\"")),
                })
            }
            "brook.on_full" => {
                st.reject_when_full = Some(match v {
                    "reject" => true,
                    "drop_oldest" => false,
                    _ => return Err(bad("must be \"reject\" or \"drop_oldest\"")),
                })
            }
            _ => return Err(bad("not a topic config Brook knows")),
        }
    }
    Ok(out)
}

pub fn create_topics(
    ctx: &Ctx,
    who: &Principal,
    r: CreateTopicsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let admin = who.allows(Op::Admin);
    let mut results = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let name = t.name.0.to_string();
        let configs: Vec<(String, Option<String>)> = t
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let res = CreatableTopicResult::default().with_name(TopicName(s(&name)));
        let outcome = if !admin {
            Err((
                err::TOPIC_AUTHORIZATION_FAILED,
                format!("user {:?} may not create topics (admin)", who.name()),
            ))
        } else if !t.assignments.is_empty() {
            Err((
                err::INVALID_REQUEST,
                "manual replica assignment is not supported".to_string(),
            ))
        } else {
            settings(t.num_partitions, t.replication_factor, &configs).and_then(|st| {
                let cfg = st.topic_config(&ctx.broker);
                if r.validate_only {
                    crate::log::store::validate_topic_name(&name)
                        .map_err(|e| (err::INVALID_TOPIC_EXCEPTION, e.to_string()))?;
                    cfg.validate(&name)
                        .map_err(|e| (err::INVALID_CONFIG, e.to_string()))?;
                    if ctx.broker.topic(&name).is_ok() {
                        return Err((err::TOPIC_ALREADY_EXISTS, format!("{name} exists")));
                    }
                    Ok(cfg.partitions)
                } else {
                    cfg.validate(&name)
                        .map_err(|e| (err::INVALID_CONFIG, e.to_string()))?;
                    ctx.broker
                        .create_topic_with(&name, cfg)
                        .map(|t| t.partitions().len().sat_u32())
                        .map_err(|e| (code_of(&e), e.to_string()))
                }
            })
        };
        results.push(match outcome {
            Ok(n) => {
                if !r.validate_only {
                    tracing::info!(topic = %name, partitions = n, "topic created by a Kafka client");
                }
                res.with_num_partitions(n as i32).with_replication_factor(1)
            }
            Err((code, message)) => res
                .with_error_code(code)
                .with_error_message(Some(s(message))),
        });
    }
    let resp = CreateTopicsResponse::default().with_topics(results);
    codec::response(ApiKey::CreateTopics, version, id, &resp)
}

pub fn delete_topics(
    ctx: &Ctx,
    who: &Principal,
    r: DeleteTopicsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let admin = who.allows(Op::Admin);
    // v0-5 name topics in topic_names; v6 in topics (by name; ids are not supported).
    let mut names: Vec<Option<String>> = r
        .topic_names
        .iter()
        .map(|n| Some(n.0.to_string()))
        .collect();
    names.extend(
        r.topics
            .iter()
            .map(|t| t.name.as_ref().map(|n| n.0.to_string())),
    );
    let responses = names
        .into_iter()
        .map(|name| {
            let res =
                DeletableTopicResult::default().with_name(name.as_ref().map(|n| TopicName(s(n))));
            let Some(name) = name else {
                return res
                    .with_error_code(err::UNKNOWN_TOPIC_OR_PARTITION)
                    .with_error_message(Some(s("topic ids are not supported; name the topic")));
            };
            if !admin {
                return res
                    .with_error_code(err::TOPIC_AUTHORIZATION_FAILED)
                    .with_error_message(Some(s(format!(
                        "user {:?} may not delete topics (admin)",
                        who.name()
                    ))));
            }
            match ctx.broker.delete_topic(&name) {
                Ok(()) => {
                    ctx.producers.forget_topic(&name);
                    tracing::info!(topic = %name, "topic deleted by a Kafka client");
                    res
                }
                Err(e) => res
                    .with_error_code(code_of(&e))
                    .with_error_message(Some(s(e.to_string()))),
            }
        })
        .collect();
    let resp = DeleteTopicsResponse::default().with_responses(responses);
    codec::response(ApiKey::DeleteTopics, version, id, &resp)
}

/// A topic's settings under Kafka's names.
pub fn kafka_configs(cfg: &TopicConfig) -> Vec<(&'static str, String)> {
    let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    vec![
        ("cleanup.policy", cfg.cleanup.kafka_name().into()),
        (
            "retention.ms",
            opt(cfg.retention.limit().map(|d| d.as_millis().sat_u64())),
        ),
        ("retention.bytes", opt(cfg.retention_size.limit())),
        ("segment.bytes", cfg.segment_size.bytes().to_string()),
        ("max.message.bytes", cfg.max_batch_size.bytes().to_string()),
        (
            "delete.retention.ms",
            cfg.delete_retention.as_millis().to_string(),
        ),
        ("min.insync.replicas", "1".into()),
        ("unclean.leader.election.enable", "false".into()),
        ("compression.type", "producer".into()),
        (
            "message.timestamp.type",
            match cfg.timestamp_type {
                crate::log::TimestampType::Create => "CreateTime",
                crate::log::TimestampType::LogAppend => "LogAppendTime",
            }
            .into(),
        ),
        (
            "brook.on_full",
            match cfg.on_full {
                OnFull::Reject => "reject",
                OnFull::DropOldest => "drop_oldest",
            }
            .into(),
        ),
    ]
}

/// A topic's config with Kafka-named `pairs` applied to it: keys given set their value, keys
/// absent take the server's `topic_defaults` (AlterConfigs replaces a topic's whole set); the
/// partition count and Brook's own settings stay.
fn altered(
    ctx: &Ctx,
    current: &TopicConfig,
    pairs: &[(String, Option<String>)],
) -> Result<TopicConfig, (i16, String)> {
    let computed = settings(-1, -1, pairs)?.topic_config(&ctx.broker);
    let mut cfg = current.clone();
    cfg.retention = computed.retention;
    cfg.retention_size = computed.retention_size;
    cfg.segment_size = computed.segment_size;
    cfg.max_batch_size = computed.max_batch_size;
    cfg.on_full = computed.on_full;
    cfg.timestamp_type = computed.timestamp_type;
    cfg.cleanup = computed.cleanup;
    cfg.delete_retention = computed.delete_retention;
    Ok(cfg)
}

/// One resource of AlterConfigs or IncrementalAlterConfigs: `change` turns the topic's current
/// Kafka-named configs into the wanted set. Returns the error code and message.
fn alter_resource(
    ctx: &Ctx,
    who: &Principal,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&mut Vec<(String, Option<String>)>) -> Result<(), (i16, String)>,
) -> (i16, Option<String>) {
    let outcome = (|| {
        if resource_type == BROKER_RESOURCE {
            return Err((
                err::INVALID_REQUEST,
                "the broker's settings are in its config file (brook.toml)".to_string(),
            ));
        }
        if resource_type != TOPIC_RESOURCE {
            return Err((
                err::INVALID_REQUEST,
                "only topic configs can be altered".into(),
            ));
        }
        if !who.allows(Op::Admin) {
            return Err((
                err::TOPIC_AUTHORIZATION_FAILED,
                format!("user {:?} may not alter topics (admin)", who.name()),
            ));
        }
        let topic = ctx
            .broker
            .topic(name)
            .map_err(|e| (code_of(&e), e.to_string()))?;
        let mut pairs: Vec<(String, Option<String>)> = kafka_configs(topic.config())
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v)))
            .collect();
        change(&mut pairs)?;
        let cfg = altered(ctx, topic.config(), &pairs)?;
        cfg.validate(name)
            .map_err(|e| (err::INVALID_CONFIG, e.to_string()))?;
        if !validate_only {
            ctx.broker
                .alter_topic(name, cfg)
                .map_err(|e| (code_of(&e), e.to_string()))?;
            tracing::info!(topic = name, "topic config altered by a Kafka client");
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => (err::NONE, None),
        Err((code, message)) => (code, Some(message)),
    }
}

/// AlterConfigs (`admin`): a topic's configs become exactly those given (the others return to
/// the server's defaults), as in Kafka.
pub fn alter_configs(
    ctx: &Ctx,
    who: &Principal,
    r: AlterConfigsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let responses = r
        .resources
        .iter()
        .map(|res| {
            let given: Vec<(String, Option<String>)> = res
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect();
            let (code, message) = alter_resource(
                ctx,
                who,
                res.resource_type,
                res.resource_name.as_str(),
                r.validate_only,
                |pairs| {
                    *pairs = given;
                    Ok(())
                },
            );
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(s))
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
        })
        .collect();
    let resp = AlterConfigsResponse::default().with_responses(responses);
    codec::response(ApiKey::AlterConfigs, version, id, &resp)
}

/// IncrementalAlterConfigs (`admin`): SET and DELETE (back to the server's default) per key;
/// APPEND and SUBTRACT apply to list configs, and Brook's topic configs are not lists.
pub fn incremental_alter_configs(
    ctx: &Ctx,
    who: &Principal,
    r: IncrementalAlterConfigsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let responses = r
        .resources
        .iter()
        .map(|res| {
            let (code, message) = alter_resource(
                ctx,
                who,
                res.resource_type,
                res.resource_name.as_str(),
                r.validate_only,
                |pairs| {
                    for c in &res.configs {
                        let key = c.name.to_string();
                        pairs.retain(|(k, _)| *k != key);
                        match c.config_operation {
                            0 => pairs.push((key, c.value.as_ref().map(|v| v.to_string()))),
                            1 => {}
                            op => {
                                return Err((
                                    err::INVALID_CONFIG,
                                    format!("{key}: operation {op} (APPEND/SUBTRACT) applies to lists; it is not one"),
                                ));
                            }
                        }
                    }
                    Ok(())
                },
            );
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(s))
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
        })
        .collect();
    let resp = IncrementalAlterConfigsResponse::default().with_responses(responses);
    codec::response(ApiKey::IncrementalAlterConfigs, version, id, &resp)
}

/// Kafka's resource type for topics.
const TOPIC_RESOURCE: i8 = 2;
/// Kafka's resource type for brokers.
const BROKER_RESOURCE: i8 = 4;

/// The broker's effective settings under Kafka's names.
fn broker_configs(ctx: &Ctx) -> Vec<(&'static str, String)> {
    let d = &ctx.broker.options().topic_defaults;
    let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    vec![
        ("broker.id", "0".into()),
        ("num.partitions", d.partitions.to_string()),
        (
            "log.retention.ms",
            opt(d.retention.limit().map(|t| t.as_millis().sat_u64())),
        ),
        ("log.retention.bytes", opt(d.retention_size.limit())),
        ("log.segment.bytes", d.segment_size.bytes().to_string()),
        ("message.max.bytes", d.max_batch_size.bytes().to_string()),
        (
            "socket.request.max.bytes",
            ctx.config.max_request_size.bytes().to_string(),
        ),
        (
            "auto.create.topics.enable",
            ctx.config.auto_create_topics.to_string(),
        ),
        (
            "connections.max.idle.ms",
            ctx.config.idle_timeout.0.as_millis().to_string(),
        ),
        ("default.replication.factor", "1".into()),
        ("min.insync.replicas", "1".into()),
        ("offsets.topic.replication.factor", "1".into()),
        ("transaction.state.log.replication.factor", "1".into()),
        ("log.cleanup.policy", "delete".into()),
        ("compression.type", "producer".into()),
    ]
}

/// The topic configs AlterConfigs and IncrementalAlterConfigs change.
const ALTERABLE: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "cleanup.policy",
    "delete.retention.ms",
    "brook.on_full",
];

/// One described config; `source` is Kafka's (1: the topic's own, 5: the broker's static).
fn described(k: &str, v: String, source: i8) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(s(k))
        .with_value(Some(s(v)))
        .with_read_only(source != 1 || !ALTERABLE.contains(&k))
        .with_config_source(source)
}

pub fn describe_configs(
    ctx: &Ctx,
    who: &Principal,
    r: DescribeConfigsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let results = r
        .resources
        .iter()
        .map(|res| {
            let name = res.resource_name.to_string();
            let out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(s(&name));
            let wanted = res.configuration_keys.as_ref();
            let asked = |k: &str| wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == k));
            if res.resource_type == BROKER_RESOURCE {
                if !who.allows(Op::Admin) {
                    return out.with_error_code(err::CLUSTER_AUTHORIZATION_FAILED);
                }
                return out.with_configs(
                    broker_configs(ctx)
                        .into_iter()
                        .filter(|(k, _)| asked(k))
                        .map(|(k, v)| described(k, v, 5))
                        .collect(),
                );
            }
            if res.resource_type != TOPIC_RESOURCE {
                return out
                    .with_error_code(err::INVALID_REQUEST)
                    .with_error_message(Some(s("only topic and broker configs can be described")));
            }
            if !who.allows(Op::Describe(&name)) {
                return out.with_error_code(err::TOPIC_AUTHORIZATION_FAILED);
            }
            match ctx.broker.topic(&name) {
                Ok(t) => out.with_configs(
                    kafka_configs(t.config())
                        .into_iter()
                        .filter(|(k, _)| asked(k))
                        .map(|(k, v)| described(k, v, 1))
                        .collect(),
                ),
                Err(e) => out
                    .with_error_code(code_of(&e))
                    .with_error_message(Some(s(e.to_string()))),
            }
        })
        .collect();
    let resp = DescribeConfigsResponse::default().with_results(results);
    codec::response(ApiKey::DescribeConfigs, version, id, &resp)
}

/// CreatePartitions (admin): grows topics; a count not above the current one is
/// INVALID_PARTITIONS, a manual assignment INVALID_REQUEST (one node holds every partition).
/// Records already stored stay where they are; keyed records written afterwards are placed
/// over the new count.
pub fn create_partitions(
    ctx: &Ctx,
    who: &Principal,
    r: CreatePartitionsRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
    let admin = who.allows(Op::Admin);
    let results = r
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let outcome = if !admin {
                Err((
                    err::TOPIC_AUTHORIZATION_FAILED,
                    format!("user {:?} may not add partitions (admin)", who.name()),
                ))
            } else if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                Err((
                    err::INVALID_REQUEST,
                    "manual replica assignment is not supported".to_string(),
                ))
            } else {
                match (ctx.broker.topic(name), u32::try_from(t.count)) {
                    (Err(e), _) => Err((code_of(&e), e.to_string())),
                    (Ok(topic), Ok(n)) if n as usize > topic.partitions().len() => {
                        if r.validate_only {
                            Ok(())
                        } else {
                            ctx.broker
                                .add_partitions(name, n)
                                .map(|_| {
                                    tracing::info!(topic = name, partitions = n, "partitions added by a Kafka client");
                                })
                                .map_err(|e| (code_of(&e), e.to_string()))
                        }
                    }
                    (Ok(topic), _) => Err((
                        err::INVALID_PARTITIONS,
                        format!(
                            "topic {name:?} has {} partitions; the count can only grow (asked for {})",
                            topic.partitions().len(),
                            t.count
                        ),
                    )),
                }
            };
            let res = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            match outcome {
                Ok(()) => res,
                Err((code, message)) => res
                    .with_error_code(code)
                    .with_error_message(Some(s(message))),
            }
        })
        .collect();
    let resp = CreatePartitionsResponse::default().with_results(results);
    codec::response(ApiKey::CreatePartitions, version, id, &resp)
}

/// DescribeCluster: the one node, which is also the controller.
pub fn describe_cluster(
    ctx: &Ctx,
    listener: usize,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    let (host, port) = &ctx.advertised[listener];
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(s("brook"))
        .with_controller_id(BrokerId(0))
        .with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(0))
                .with_host(s(host))
                .with_port(*port),
        ])
        .with_cluster_authorized_operations(i32::MIN);
    codec::response(ApiKey::DescribeCluster, version, id, &resp)
}

/// Why a transactional producer is refused (FindCoordinator's error message).
pub const NO_TRANSACTIONS: &str =
    "Brook does not support Kafka transactions (transactional.id); idempotent producers work";

pub fn find_coordinator(
    ctx: &Ctx,
    listener: usize,
    r: FindCoordinatorRequest,
    version: i16,
    id: i32,
) -> Result<Vec<u8>, KafkaError> {
    let (host, port) = &ctx.advertised[listener];
    let host = s(host);
    // Key type 1 asks for a transaction coordinator: there is none. The error is one clients
    // do not retry (a transactional producer fails at once), with the reason in the message.
    let transactions = r.key_type == 1;
    let refusal = || Some(s(NO_TRANSACTIONS));
    let resp = if version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(
            r.coordinator_keys
                .iter()
                .map(|k| {
                    let c = Coordinator::default().with_key(k.clone());
                    if transactions {
                        c.with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(err::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                            .with_error_message(refusal())
                    } else {
                        c.with_node_id(BrokerId(0))
                            .with_host(host.clone())
                            .with_port(*port)
                    }
                })
                .collect(),
        )
    } else if transactions {
        FindCoordinatorResponse::default()
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(err::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_error_message(refusal())
    } else {
        FindCoordinatorResponse::default()
            .with_node_id(BrokerId(0))
            .with_host(host)
            .with_port(*port)
    };
    codec::response(ApiKey::FindCoordinator, version, id, &resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_configs_map_from_kafka_names_and_bad_keys_are_named() {
        let c = |k: &str, v: &str| vec![(k.to_string(), Some(v.to_string()))];
        let st = settings(3, 1, &c("retention.ms", "60000")).expect("ok");
        assert_eq!((st.partitions, st.retention_ms), (Some(3), Some(60_000)));
        assert_eq!(
            settings(-1, -1, &c("brook.on_full", "reject"))
                .expect("ok")
                .reject_when_full,
            Some(true)
        );
        let (code, msg) = settings(1, 1, &c("compression.type", "zstd")).expect_err("zstd");
        assert_eq!(code, err::INVALID_CONFIG);
        assert!(msg.contains("compression.type"), "{msg}");
        let (code, msg) = settings(1, 1, &c("flush.messages", "1")).expect_err("unknown");
        assert_eq!(code, err::INVALID_CONFIG);
        assert!(msg.contains("flush.messages"), "{msg}");
        for (k, v) in [
            ("min.insync.replicas", "1"),
            ("unclean.leader.election.enable", "false"),
            ("compression.type", "producer"),
            ("message.timestamp.type", "CreateTime"),
            ("message.timestamp.type", "LogAppendTime"),
            ("delete.retention.ms", "1000"),
        ] {
            settings(1, 1, &c(k, v)).unwrap_or_else(|e| panic!("{k}={v}: {e:?}"));
        }
        for (k, v) in [
            ("min.insync.replicas", "2"),
            ("message.timestamp.type", "BrokerTime"),
            ("max.message.bytes", "0"),
        ] {
            let (code, msg) = settings(1, 1, &c(k, v)).expect_err(k);
            assert!(code == err::INVALID_CONFIG && msg.contains(k), "{msg}");
        }
        assert_eq!(
            settings(1, 1, &c("max.message.bytes", "5000000"))
                .expect("ok")
                .max_message_bytes,
            Some(5_000_000)
        );
        assert_eq!(
            settings(0, 1, &[]).expect_err("0").0,
            err::INVALID_PARTITIONS
        );
        assert_eq!(
            settings(1, 3, &[]).expect_err("rf").0,
            err::INVALID_REPLICATION_FACTOR
        );
        for (v, want) in [
            ("compact", crate::log::Cleanup::Compact),
            ("delete", crate::log::Cleanup::Delete),
            ("compact,delete", crate::log::Cleanup::CompactDelete),
            ("delete, compact", crate::log::Cleanup::CompactDelete),
        ] {
            let got = settings(1, 1, &c("cleanup.policy", v)).expect(v).cleanup;
            assert_eq!(got, Some(want), "{v}");
        }
        assert_eq!(
            settings(1, 1, &c("cleanup.policy", "shred"))
                .expect_err("shred")
                .0,
            err::INVALID_CONFIG
        );
    }
}
