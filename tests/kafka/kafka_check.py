"""Kafka client scenarios against Brook's Kafka listener, run by tests/kafka_clients.rs.

    python kafka_check.py --bootstrap 127.0.0.1:PORT SCENARIO

Scenarios use confluent-kafka (librdkafka) and kafka-python exactly as applications do.
Each prints "ok SCENARIO" at the end and exits non-zero (with the reason) on any failure.
"""

import argparse
import sys
import time
import uuid
import warnings


def fail(msg):
    print(f"FAILED: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def admin(bootstrap):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


def create(bootstrap, name, partitions, config=None):
    from confluent_kafka.admin import NewTopic

    a = admin(bootstrap)  # kept alive until the future resolves
    fs = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
    )
    fs[name].result(timeout=10)


def consume_all(bootstrap, topic, expected, group=None, timeout=30):
    """Reads `expected` records from the beginning; returns (partition, offset, key, value, headers)."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out = []
    deadline = time.time() + timeout
    while len(out) < expected and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        check(m.error() is None, f"consumer error: {m.error()}")
        out.append((m.partition(), m.offset(), m.key(), m.value(), m.headers() or []))
    c.close()
    check(len(out) == expected, f"{topic}: read {len(out)} of {expected}")
    return out


def scenario_codecs(bootstrap):
    """acks=all + idempotence, every compression codec; everything comes back intact, in order."""
    from confluent_kafka import Producer

    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        topic = f"codec-{codec}"
        create(bootstrap, topic, 3)
        errors = []
        p = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "compression.type": codec,
                "linger.ms": 5,
            }
        )
        n = 3000
        for i in range(n):
            key = f"k{i % 7}".encode()
            p.produce(
                topic,
                key=key,
                value=f"{codec}-{i:06d}".encode() * 3,
                headers=[("seq", str(i).encode()), ("codec", codec.encode())],
                on_delivery=lambda err, msg: errors.append(err) if err else None,
            )
            if i % 500 == 0:
                p.poll(0)
        left = p.flush(30)
        check(left == 0, f"{codec}: {left} messages not delivered")
        check(not errors, f"{codec}: delivery errors {errors[:3]}")
        got = consume_all(bootstrap, topic, n)
        seqs = {}
        for part, off, key, value, headers in got:
            h = dict(headers)
            i = int(h["seq"])
            check(h["codec"] == codec.encode(), f"{codec}: header {h}")
            check(value == f"{codec}-{i:06d}".encode() * 3, f"{codec}: value of {i}")
            check(key == f"k{i % 7}".encode(), f"{codec}: key of {i}")
            seqs.setdefault((part, key), []).append(i)
        # Order per key (one key -> one partition) is the produce order.
        for k, s in seqs.items():
            check(s == sorted(s), f"{codec}: order broken for {k}")
        check(sorted(i for s in seqs.values() for i in s) == list(range(n)), f"{codec}: lost or duplicated")
        print(f"codec {codec}: {n} records produced (acks=all, idempotent) and read back", flush=True)


def scenario_group(bootstrap):
    """Three members join and leave one group while it consumes: every record once, in order."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    topic = "grouped"
    create(bootstrap, topic, 6)
    n = 6000
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(n):
        p.produce(topic, partition=i % 6, value=str(i).encode())
        if i % 1000 == 0:
            p.poll(0)
    check(p.flush(30) == 0, "produce did not finish")

    seen = {}  # (partition, offset) -> count
    last = {}  # partition -> last value processed (order check)
    processed = {}  # consumer -> {partition: next offset}
    trace = []  # hand-over events, printed when a check fails

    def note(event):
        trace.append(f"{time.monotonic() - t0:7.3f} {event}")

    def checked(cond, msg):
        check(cond, msg + "\nhand-overs:\n" + "\n".join(trace[-40:]))

    def committed_ok(name, what, commit):
        # A refused hand-over commit would make the next owner re-process: a refusal (raised,
        # or carried by a partition) fails the scenario with the hand-overs so far.
        try:
            result = commit()
        except KafkaException as e:
            checked(False, f"{name}: {what} commit failed: {e}")
        bad = [(tp.partition, str(tp.error)) for tp in result if tp.error is not None]
        note(f"{name} {what} commit {[(tp.partition, tp.offset) for tp in result]}")
        checked(not bad, f"{name}: {what} commit refused: {bad}")

    def make(name):
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "three",
                "client.id": name,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            }
        )
        processed[name] = {}

        def on_assign(consumer, partitions):
            note(f"{name} assigned {sorted(tp.partition for tp in partitions)}")

        def on_revoke(consumer, partitions):
            # Hand over exactly what was processed.
            done = [TopicPartition(topic, tp.partition, processed[name][tp.partition])
                    for tp in partitions if tp.partition in processed[name]]
            note(f"{name} revoked {sorted(tp.partition for tp in partitions)}")
            if done:
                committed_ok(name, "hand-over", lambda: consumer.commit(offsets=done, asynchronous=False))
            for tp in partitions:
                processed[name].pop(tp.partition, None)

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        return c

    t0 = time.monotonic()
    members = {"c1": make("c1")}
    closed = set()
    total = 0
    deadline = time.time() + 120
    by_member = {}  # consumer -> records processed
    resumed = []  # (consumer, partition, offset): partitions taken over part-way
    while total < n and time.time() < deadline:
        round_start = time.monotonic()
        for name, c in list(members.items()):
            # Up to 20 records from each member per round of at least 20 ms: the group
            # consumes at most about 1,000 records/s per member, so members join and leave
            # while partitions are part-way through and hand-overs really happen.
            for _ in range(20):
                m = c.poll(0.005)
                if m is None:
                    break
                checked(m.error() is None, f"{name}: {m.error()}")
                key = (m.partition(), m.offset())
                if m.partition() not in processed[name]:
                    note(f"{name} starts partition {m.partition()} at offset {m.offset()}")
                    if m.offset() > 0:
                        resumed.append((name, m.partition(), m.offset()))
                by_member[name] = by_member.get(name, 0) + 1
                seen[key] = seen.get(key, 0) + 1
                v = int(m.value())
                checked(v > last.get(m.partition(), -1), f"partition {m.partition()}: {v} after {last.get(m.partition())}")
                last[m.partition()] = v
                processed[name][m.partition()] = m.offset() + 1
                total += 1
                if total % 200 == 0:
                    committed_ok(name, "periodic", lambda: c.commit(asynchronous=False))
        time.sleep(max(0.0, 0.02 - (time.monotonic() - round_start)))
        if total >= 1000 and "c2" not in members and "c2" not in closed:
            note("c2 joins")
            members["c2"] = make("c2")
        if total >= 2000 and "c3" not in members:
            note("c3 joins")
            members["c3"] = make("c3")
        if total >= 3500 and "c2" in members:
            note("c2 closes")
            members.pop("c2").close()  # leaves the group; its partitions move
            closed.add("c2")
    dups = [k for k, v in seen.items() if v > 1]
    checked(not dups, f"{len(dups)} records processed twice, e.g. {dups[:3]}")
    checked(len(seen) == n, f"processed {len(seen)} of {n}")
    checked(all(by_member.get(m, 0) > 0 for m in ("c1", "c2", "c3")), f"records per member: {by_member}")
    checked(resumed, "no partition was handed over part-way")
    print(f"group: {n} records over 6 partitions, 3 members joining and leaving ({by_member}), "
          f"{len(resumed)} partitions taken over part-way, each record once, in order", flush=True)


def scenario_admin(bootstrap):
    """Create, describe (configs), refuse bad requests, list, delete topics; list groups."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource, NewTopic

    a = admin(bootstrap)
    create(bootstrap, "adm", 4, {"retention.ms": "3600000", "segment.bytes": "1048576"})
    md = a.list_topics(timeout=10)
    check("adm" in md.topics and len(md.topics["adm"].partitions) == 4, f"metadata {md.topics.get('adm')}")
    res = ConfigResource(ConfigResource.Type.TOPIC, "adm")
    cfg = a.describe_configs([res])[res].result(timeout=10)
    check(cfg["retention.ms"].value == "3600000", f"retention.ms {cfg['retention.ms'].value}")
    check(cfg["segment.bytes"].value == "1048576", f"segment.bytes {cfg['segment.bytes'].value}")
    for bad, what in [
        (NewTopic("adm", num_partitions=1, replication_factor=1), "TOPIC_ALREADY_EXISTS"),
        (NewTopic("adm2", num_partitions=1, replication_factor=3), "INVALID_REPLICATION_FACTOR"),
        (NewTopic("adm3", num_partitions=1, replication_factor=1, config={"cleanup.policy": "shred"}), "INVALID_CONFIG"),
        (NewTopic("bad/name", num_partitions=1, replication_factor=1), "TOPIC_EXCEPTION"),
    ]:
        try:
            a.create_topics([bad])[bad.topic].result(timeout=10)
            fail(f"{bad.topic} was created")
        except KafkaException as e:
            check(e.args[0].name() == what, f"{bad.topic}: {e.args[0].name()} instead of {what}")
    a.delete_topics(["adm"])["adm"].result(timeout=10)
    check("adm" not in a.list_topics(timeout=10).topics, "adm still listed")
    try:
        a.delete_topics(["adm"])["adm"].result(timeout=10)
        fail("deleting a missing topic succeeded")
    except KafkaException as e:
        check(e.args[0].name() == "UNKNOWN_TOPIC_OR_PART", e.args[0].name())
    # Configs Kafka clients set: a per-topic message size, and replication settings one node meets.
    create(bootstrap, "large", 1, {"max.message.bytes": "5000000", "min.insync.replicas": "1",
                                   "unclean.leader.election.enable": "false",
                                   "compression.type": "producer",
                                   "message.timestamp.type": "CreateTime"})
    res = ConfigResource(ConfigResource.Type.TOPIC, "large")
    cfg = a.describe_configs([res])[res].result(timeout=10)
    check(cfg["max.message.bytes"].value == "5000000", f"max.message.bytes {cfg['max.message.bytes'].value}")
    check(cfg["min.insync.replicas"].value == "1", "min.insync.replicas")
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 10_000_000})
    outcome = {}
    big = b"y" * 2_000_000
    for topic in ("large", "adm4"):
        if topic == "adm4":
            create(bootstrap, "adm4", 1)
        p.produce(topic, big, callback=lambda e, m, t=topic: outcome.__setitem__(t, e))
        p.flush(30)
    check(outcome.get("large") is None and "large" in outcome, f"2 MB into max.message.bytes=5000000: {outcome}")
    check(outcome.get("adm4") is not None and outcome["adm4"].name() == "MSG_SIZE_TOO_LARGE",
          f"2 MB into a default topic: {outcome}")
    got = consume_all(bootstrap, "large", 1)
    check(got[0][3] == big, "the 2 MB record reads back")
    brk = ConfigResource(ConfigResource.Type.BROKER, "0")
    bc = a.describe_configs([brk])[brk].result(timeout=10)
    check(bc["message.max.bytes"].value == str(1 << 20) and bc["broker.id"].value == "0",
          f"broker configs {sorted(bc)}")
    for k, v, name in [("min.insync.replicas", "2", "adm5"), ("message.timestamp.type", "BrokerTime", "adm6"),
                       ("flush.messages", "1", "adm7")]:
        try:
            create(bootstrap, name, 1, {k: v})
            fail(f"{k}={v} accepted")
        except KafkaException as e:
            check(e.args[0].name() == "INVALID_CONFIG" and k in e.args[0].str(), f"{k}: {e.args[0]}")
    # CreatePartitions: grow, write to a new partition and read it back; never shrink.
    from confluent_kafka.admin import NewPartitions

    create(bootstrap, "grow", 2)
    a.create_partitions([NewPartitions("grow", 8)], validate_only=True)["grow"].result(timeout=10)
    check(len(a.list_topics("grow", timeout=10).topics["grow"].partitions) == 2, "validate_only grew it")
    a.create_partitions([NewPartitions("grow", 4)])["grow"].result(timeout=10)
    check(len(a.list_topics("grow", timeout=10).topics["grow"].partitions) == 4, "not grown to 4")
    done = []
    p.produce("grow", b"in-3", partition=3, callback=lambda e, m: done.append((e, m.partition())))
    p.flush(10)
    check(done == [(None, 3)], f"produce to the new partition 3: {done}")
    got = consume_all(bootstrap, "grow", 1)
    check(got[0][0] == 3 and got[0][3] == b"in-3", f"read back {got}")
    for n in (4, 3):
        try:
            a.create_partitions([NewPartitions("grow", n)])["grow"].result(timeout=10)
            fail(f"grow to {n} accepted")
        except KafkaException as e:
            check(e.args[0].name() == "INVALID_PARTITIONS", f"{n}: {e.args[0]}")
    # DeleteRecords: the records before an offset go; consumers start after them.
    from confluent_kafka import TopicPartition

    create(bootstrap, "dr", 1)
    for i in range(10):
        p.produce("dr", str(i).encode())
    check(p.flush(10) == 0, "produce dr")
    tp = TopicPartition("dr", 0, 6)
    res = a.delete_records([tp])
    low = list(res.values())[0].result(timeout=10)
    check(low.low_watermark == 6, f"low watermark {low}")
    left = consume_all(bootstrap, "dr", 4)
    check([r[3] for r in left] == [b"6", b"7", b"8", b"9"], f"after DeleteRecords: {left}")
    try:
        list(a.delete_records([TopicPartition("dr", 0, 99)]).values())[0].result(timeout=10)
        fail("DeleteRecords past the end accepted")
    except KafkaException as e:
        check(e.args[0].name() == "OFFSET_OUT_OF_RANGE", f"past the end: {e.args[0]}")
    print("admin: create/describe/delete topics, bad requests refused with the right codes", flush=True)


def scenario_times_and_refusals(bootstrap):
    """ListOffsets by time and MAX_TIMESTAMP with the found record's timestamp (confluent-kafka's
    admin client and kafka-python); a Produce over kafka.max_request_size answered
    MESSAGE_TOO_LARGE at once, the connection still usable; a transactional producer failing at
    once with the reason."""
    from confluent_kafka import KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    create(bootstrap, "times", 1)
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 40_000_000})
    stamps = [1_000, 5_000, 3_000, 4_000]
    for i, ts in enumerate(stamps):
        p.produce("times", str(i).encode(), timestamp=ts)
    check(p.flush(10) == 0, "small records not delivered")
    tp = TopicPartition("times", 0)
    a = admin(bootstrap)

    def listed(spec):
        r = a.list_offsets({tp: spec})[tp].result(timeout=10)
        return (r.offset, r.timestamp)

    check(listed(OffsetSpec.for_timestamp(2_000)) == (1, 5_000), f"for 2000: {listed(OffsetSpec.for_timestamp(2_000))}")
    check(listed(OffsetSpec.for_timestamp(3_500)) == (1, 5_000), "for 3500")
    check(listed(OffsetSpec.for_timestamp(500)) == (0, 1_000), "for 500")
    check(listed(OffsetSpec.for_timestamp(6_000))[0] == -1, "after every record")
    check(listed(OffsetSpec.max_timestamp()) == (1, 5_000), f"max: {listed(OffsetSpec.max_timestamp())}")
    check(listed(OffsetSpec.latest())[0] == 4, "latest")
    check(listed(OffsetSpec.earliest())[0] == 0, "earliest")

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    kc = KafkaConsumer(bootstrap_servers=bootstrap)
    got = kc.offsets_for_times({KTP("times", 0): 3_500})[KTP("times", 0)]
    check((got.offset, got.timestamp) == (1, 5_000), f"kafka-python offsets_for_times: {got}")
    kc.close()

    # 20 MB in one request, over kafka.max_request_size (16 MiB): refused, quickly.
    errors = []
    t0 = time.time()
    p.produce("times", b"x" * 20_000_000, callback=lambda e, m: errors.append(e))
    p.flush(30)
    check(len(errors) == 1 and errors[0] is not None and errors[0].name() == "MSG_SIZE_TOO_LARGE",
          f"oversized produce: {errors}")
    check(time.time() - t0 < 10, f"oversized produce took {time.time() - t0:.1f} s")
    done = []
    p.produce("times", b"after", callback=lambda e, m: done.append(e))
    p.flush(10)
    check(done == [None], f"a produce after the refusal: {done}")

    tp_ = Producer({"bootstrap.servers": bootstrap, "transactional.id": "tx-1"})
    t0 = time.time()
    try:
        tp_.init_transactions(20)
        fail("init_transactions succeeded")
    except KafkaException as e:
        err = e.args[0]
        check(err.fatal() and not err.retriable(), f"transactions: {err}")
        check("does not support Kafka transactions" in err.str(), f"no reason given: {err.str()}")
    check(time.time() - t0 < 5, f"init_transactions took {time.time() - t0:.1f} s")
    print("times and refusals: ListOffsets timestamps, MESSAGE_TOO_LARGE, transactions", flush=True)


def scenario_static_membership(bootstrap):
    """KIP-345 with confluent-kafka: two static members (group.instance.id); one closes and a new
    consumer with its instance id takes its place at once, with the same partitions, while the
    other keeps its own without a rebalance."""
    from confluent_kafka import Consumer

    create(bootstrap, "static", 4)

    def member(iid, events):
        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": "static-group",
            "group.instance.id": iid,
            "session.timeout.ms": 30000,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        c.subscribe(["static"],
                    on_assign=lambda _c, ps: events.append(("assign", sorted(p.partition for p in ps))),
                    on_revoke=lambda _c, ps: events.append(("revoke", sorted(p.partition for p in ps))))
        return c

    def poll_until(consumers, cond, timeout):
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                return False
            for c in consumers:
                c.poll(0.1)
        return True

    ea, eb = [], []
    a, b = member("inst-a", ea), member("inst-b", eb)

    def owned(events):
        got = [e[1] for e in events if e[0] == "assign"]
        return got[-1] if got else None

    ok = poll_until([a, b], lambda: owned(ea) and owned(eb) and
                    sorted(owned(ea) + owned(eb)) == [0, 1, 2, 3], 60)
    check(ok, f"two static members assigned: a {ea} b {eb}")
    first_b = owned(eb)
    a_events = len(ea)
    b.close()
    eb2 = []
    t0 = time.time()
    b2 = member("inst-b", eb2)
    ok = poll_until([a, b2], lambda: owned(eb2) is not None, 20)
    took = time.time() - t0
    check(ok, f"the returning static member got no assignment in 20 s: {eb2}")
    check(took < 10, f"the returning static member waited {took:.1f} s")
    check(owned(eb2) == first_b, f"returned with {owned(eb2)}, had {first_b}")
    # The other member saw no rebalance (no revoke, no new assignment).
    poll_until([a, b2], lambda: False, 1)
    check(len(ea) == a_events, f"the other member rebalanced: {ea}")
    a.close()
    b2.close()
    print(f"static membership: rejoined in {took:.1f} s with the same partitions, no rebalance", flush=True)


def scenario_group_admin(bootstrap):
    """DeleteGroups (confluent-kafka): a group with a member is refused, an idle one deleted, an
    unknown one not found; OffsetDelete (kafka-python): refused for a topic a member is assigned,
    done for one it is not; DescribeCluster: one node, cluster id brook."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka import ConsumerGroupTopicPartitions
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient

    create(bootstrap, "ga", 2)
    create(bootstrap, "gb", 1)
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        p.produce("ga", str(i).encode(), partition=i % 2)
        p.produce("gb", str(i).encode())
    check(p.flush(10) == 0, "produce")

    def commit_all(group, topic):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        n, deadline = 0, time.time() + 30
        while n < 10 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                n += 1
        c.commit(asynchronous=False)
        return c

    commit_all("idle", "ga").close()
    # busy's offsets on gb, committed before it has members (a client outside the membership).
    outside = Consumer({"bootstrap.servers": bootstrap, "group.id": "busy", "enable.auto.commit": False})
    outside.commit(offsets=[TopicPartition("gb", 0, 10)], asynchronous=False)
    outside.close()
    busy = commit_all("busy", "ga")
    a = admin(bootstrap)
    committed = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions("idle")])["idle"].result(10)
    check(all(tp.offset >= 0 for tp in committed.topic_partitions), f"idle commits {committed}")

    fs = a.delete_consumer_groups(["idle", "busy", "nope"])
    fs["idle"].result(10)
    for g, want in [("busy", "NON_EMPTY_GROUP"), ("nope", "GROUP_ID_NOT_FOUND")]:
        try:
            fs[g].result(10)
            fail(f"deleting {g} succeeded")
        except KafkaException as e:
            check(e.args[0].name() == want, f"{g}: {e.args[0].name()} instead of {want}")
    after = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions("idle", [TopicPartition("ga", 0)])])["idle"].result(10)
    check(after.topic_partitions[0].offset < 0, f"idle still has offsets: {after}")

    k = KafkaAdminClient(bootstrap_servers=bootstrap)
    res = k.delete_group_offsets("busy", [KTP("ga", 0), KTP("gb", 0)])
    codes = {tp.topic: getattr(err, "errno", err) for tp, err in res.items()}
    check(codes.get("ga") == 86, f"offsets of an assigned topic deleted: {res}")
    check(codes.get("gb") in (0, None), f"offsets of gb not deleted: {res}")
    left = k.list_group_offsets("busy")
    left = left.get("busy", left)
    check(KTP("gb", 0) not in left and KTP("ga", 0) in left, f"busy offsets after: {left}")
    cluster = k.describe_cluster()
    check(cluster.get("cluster_id") == "brook" and len(cluster.get("brokers", [])) == 1, f"cluster {cluster}")
    k.close()
    busy.close()
    print("group admin: DeleteGroups, OffsetDelete, DescribeCluster", flush=True)


def scenario_alter_configs(bootstrap):
    """IncrementalAlterConfigs and AlterConfigs (confluent-kafka): a raised max.message.bytes takes
    effect for the next produce, DELETE returns a key to the server's default, AlterConfigs
    replaces the whole set, validate_only changes nothing, broker configs are refused."""
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    a = admin(bootstrap)
    create(bootstrap, "alt", 1, {"segment.bytes": "4194304"})
    res = ConfigResource(ConfigResource.Type.TOPIC, "alt")

    def described():
        return {k: v.value for k, v in a.describe_configs([res])[res].result(timeout=10).items()}

    def incremental(*entries, validate_only=False):
        r = ConfigResource(ConfigResource.Type.TOPIC, "alt", incremental_configs=list(entries))
        a.incremental_alter_configs([r], validate_only=validate_only)[r].result(timeout=10)

    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 10_000_000})

    def produce_2mb():
        out = []
        p.produce("alt", b"z" * 2_000_000, callback=lambda e, m: out.append(e))
        p.flush(30)
        return out[0]

    check(produce_2mb() is not None, "2 MB accepted at the default max.message.bytes")
    set_ = AlterConfigOpType.SET
    incremental(ConfigEntry("max.message.bytes", "4000000", incremental_operation=set_),
                validate_only=True)
    check(described()["max.message.bytes"] == str(1 << 20), "validate_only changed it")
    incremental(ConfigEntry("max.message.bytes", "4000000", incremental_operation=set_),
                ConfigEntry("retention.ms", "7200000", incremental_operation=set_))
    d = described()
    check(d["max.message.bytes"] == "4000000" and d["retention.ms"] == "7200000", f"after SET: {d}")
    check(d["segment.bytes"] == "4194304", f"segment.bytes kept: {d}")
    check(produce_2mb() is None, "2 MB refused after raising max.message.bytes")
    incremental(ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE))
    check(described()["max.message.bytes"] == str(1 << 20), "DELETE did not restore the default")
    err = produce_2mb()
    check(err is not None and err.name() == "MSG_SIZE_TOO_LARGE", f"after DELETE: {err}")
    full = ConfigResource(ConfigResource.Type.TOPIC, "alt", set_config={"retention.bytes": "50000000"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the API under test
        a.alter_configs([full])[full].result(timeout=10)
    d = described()
    check(d["retention.bytes"] == "50000000", f"AlterConfigs: {d}")
    check(d["retention.ms"] != "7200000" and d["segment.bytes"] != "4194304",
          f"AlterConfigs replaces the whole set: {d}")
    for bad, what in [
        (ConfigResource(ConfigResource.Type.TOPIC, "alt", incremental_configs=[
            ConfigEntry("flush.ms", "1", incremental_operation=set_)]), "INVALID_CONFIG"),
        (ConfigResource(ConfigResource.Type.BROKER, "0", incremental_configs=[
            ConfigEntry("log.retention.ms", "1", incremental_operation=set_)]), "INVALID_REQUEST"),
        (ConfigResource(ConfigResource.Type.TOPIC, "missing", incremental_configs=[
            ConfigEntry("retention.ms", "1", incremental_operation=set_)]), "UNKNOWN_TOPIC_OR_PART"),
    ]:
        try:
            a.incremental_alter_configs([bad])[bad].result(timeout=10)
            fail(f"{bad} accepted")
        except KafkaException as e:
            check(e.args[0].name() == what, f"{bad}: {e.args[0]} instead of {what}")
    # LogAppendTime: records carry the broker's time, and consumers are told so.
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

    create(bootstrap, "stamped", 1, {"message.timestamp.type": "LogAppendTime"})
    reports = []
    p.produce("stamped", b"old", timestamp=1_000, on_delivery=lambda e, m: reports.append(m.timestamp()))
    check(p.flush(10) == 0, "produce stamped")
    (kind, ts) = consume_ts(bootstrap, "stamped")
    check(kind == TIMESTAMP_LOG_APPEND_TIME and abs(ts - time.time() * 1000) < 60_000,
          f"LogAppendTime record: type {kind}, timestamp {ts}")
    # The produce answer carries the append time too (log_append_time_ms), so the delivery
    # report says what was stored.
    check(reports == [(TIMESTAMP_LOG_APPEND_TIME, ts)], f"delivery report {reports}, stored {ts}")
    incremental(ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=set_))
    p.produce("alt", b"later", timestamp=2_000)
    check(p.flush(10) == 0, "produce alt")
    check(described()["message.timestamp.type"] == "LogAppendTime", "altered timestamp type")
    print("alter configs: incremental SET/DELETE, AlterConfigs, validate_only, refusals", flush=True)


def scenario_nulls(bootstrap):
    """Tombstones and null header values stay null (not empty) for confluent-kafka and kafka-python,
    in batches that mix them with ordinary records, whatever the codec."""
    from confluent_kafka import Producer
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    create(bootstrap, "nulls", 1)
    # (key, value, headers) in this order; lingering puts them in one batch per codec.
    want = [
        (b"a", b"1", [("h", b"v")]),
        (b"a", None, [("h", None), ("e", b"")]),
        (b"b", b"", [("n", None)]),
        (b"c", b"3", []),
    ]
    for codec in ["none", "zstd"]:
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 50, "compression.type": codec})
        for k, v, h in want:
            p.produce("nulls", key=k, value=v, headers=h)
        check(p.flush(10) == 0, f"confluent produce {codec}")
    # kafka-python sends tombstones but no null header values (it refuses them locally).
    kp_want = [(k, v, [(hk, b"x" if hv is None else hv) for hk, hv in h]) for k, v, h in want]
    kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    for k, v, h in kp_want:
        kp.send("nulls", key=k, value=v, headers=h)
    kp.flush(10)
    kp.close()
    all_want = want + want + kp_want
    n = len(all_want)
    got = consume_all(bootstrap, "nulls", n)
    for i, (_, off, k, v, h) in enumerate(got):
        wk, wv, wh = all_want[i]
        check(off == i, f"offset {off} at {i}")
        check((k, v) == (wk, wv), f"confluent read {i}: {(k, v)} wanted {(wk, wv)}")
        check(list(h) == wh, f"confluent headers {i}: {h} wanted {wh}")
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=10000)
    tp = TopicPartition("nulls", 0)
    c.assign([tp])
    seen = [m for _, m in zip(range(n), c)]
    c.close()
    check(len(seen) == n, f"kafka-python read {len(seen)} of {n}")
    for i, m in enumerate(seen):
        wk, wv, wh = all_want[i]
        check((m.key, m.value) == (wk, wv), f"kafka-python read {i}: {(m.key, m.value)}")
        check([(hk, hv) for hk, hv in m.headers] == wh, f"kafka-python headers {i}: {m.headers}")
    print(f"nulls: {n} records, tombstones and null headers read back null by both clients", flush=True)


COMPACT_KEYS = 40
COMPACT_ROUNDS = 12
COMPACT_DELETED = 5  # keys k0..k4 end with a tombstone


def compact_value(key, round_):
    return f"k{key}-{round_}".encode().ljust(1500, b".")


def read_to_end(bootstrap, topic):
    """(offset, key, value) of every record of partition 0, read with confluent-kafka from the
    beginning to the end offset."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"compact-{uuid.uuid4()}",
                  "enable.auto.commit": False})
    _, end = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.time() + 30
    while (not out or out[-1][0] < end - 1) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        check(m.error() is None, f"consumer error: {m.error()}")
        out.append((m.offset(), m.key(), m.value()))
    c.close()
    check(out and out[-1][0] == end - 1, f"read to {out[-1][0] if out else None}, end {end}")
    return out


def check_compacted(bootstrap, topic, tombstones_gone):
    """The newest value of every key is there, at increasing offsets, and superseded ones went."""
    got = read_to_end(bootstrap, topic)
    offsets = [o for o, _, _ in got]
    check(offsets == sorted(set(offsets)), "offsets only grow")
    newest = {}
    for _, k, v in got:
        newest[k] = v
    for key in range(COMPACT_KEYS):
        k = f"k{key}".encode()
        if key < COMPACT_DELETED:
            want = None
            if tombstones_gone:
                check(k not in newest or newest[k] is None, f"{k}: {newest.get(k)!r}")
                continue
        else:
            want = compact_value(key, COMPACT_ROUNDS - 1)
        got_k = newest.get(k, b"missing")
        check(got_k == want, f"{k}: newest {got_k if got_k is None else got_k[:20]!r}")
    return got


def scenario_compact(bootstrap):
    """cleanup.policy=compact: after compaction a consumer reads the newest value of every key
    (tombstones as null, then gone past delete.retention.ms), skipping the gaps; kafka-python too."""
    from confluent_kafka import Producer
    from kafka import KafkaConsumer, TopicPartition

    create(bootstrap, "compacted", 1, {"cleanup.policy": "compact", "segment.bytes": "65536",
                                       "delete.retention.ms": "3000"})
    # Batches well under the topic's 64 KiB segments (its largest batch).
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 16384})
    failed = []

    def report(err, _m):
        if err is not None:
            failed.append(err)

    for r in range(COMPACT_ROUNDS):
        for key in range(COMPACT_KEYS):
            p.produce("compacted", key=f"k{key}".encode(), value=compact_value(key, r),
                      on_delivery=report)
    for key in range(COMPACT_DELETED):
        p.produce("compacted", key=f"k{key}".encode(), value=None, on_delivery=report)
    # Keyless filler seals the segment holding the tombstones (compaction works on sealed ones).
    for _ in range(60):
        p.produce("compacted", value=b"f" * 1500, on_delivery=report)
    check(p.flush(10) == 0 and not failed, f"produce: {failed[:3]}")
    produced = COMPACT_ROUNDS * COMPACT_KEYS + COMPACT_DELETED + 60
    deadline = time.time() + 60
    while True:
        got = check_compacted(bootstrap, "compacted", tombstones_gone=False)
        if len(got) < produced // 2:
            break
        check(time.time() < deadline, f"not compacted after 60 s: {len(got)} of {produced} records")
        time.sleep(0.5)
    # Past delete.retention.ms the tombstones go too.
    deadline = time.time() + 60
    while any(v is None and k is not None for _, k, v in got):
        check(time.time() < deadline, "tombstones still there 60 s after delete.retention.ms")
        time.sleep(0.5)
        got = check_compacted(bootstrap, "compacted", tombstones_gone=True)
    # kafka-python reads the same records.
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=10000)
    c.assign([TopicPartition("compacted", 0)])
    seen = [(m.offset, m.key, m.value) for _, m in zip(range(len(got)), c)]
    c.close()
    check(seen == got, f"kafka-python read {len(seen)} records, confluent-kafka {len(got)}")
    print(f"compact: {produced} records produced, {len(got)} after compaction; newest of each key kept",
          flush=True)


def scenario_compact_verify(bootstrap):
    """Reads the topic scenario_compact left (after a restart) and checks it again."""
    got = check_compacted(bootstrap, "compacted", tombstones_gone=True)
    print(f"compact-verify: {len(got)} records, newest of each key", flush=True)


def consume_ts(bootstrap, topic):
    """(timestamp type, timestamp) of the first record of `topic`."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ts-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    deadline = time.time() + 30
    try:
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                return m.timestamp()
        fail(f"nothing read from {topic}")
    finally:
        c.close()


def scenario_commit_seek(bootstrap):
    """kafka-python: acks=all produce, group commit, restart at the commit, seek, offsets by time."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics(
        [NewTopic("seekable", num_partitions=1, replication_factor=1)]
    )
    # kafka-python's own idempotent producer, gzip-compressed (its built-in codec).
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         compression_type="gzip")
    t0 = int(time.time() * 1000)
    for i in range(100):
        prod.send("seekable", key=b"k", value=str(i).encode(), timestamp_ms=t0 + i * 1000).get(timeout=10)
    prod.close()
    tp = TopicPartition("seekable", 0)

    def consumer():
        c = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id="py-group",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10000,
        )
        c.assign([tp])
        return c

    c = consumer()
    got = []
    for m in c:
        got.append(int(m.value))
        if len(got) == 50:
            break
    check(got == list(range(50)), f"first 50: {got[:5]}...")
    c.commit({tp: __import__("kafka").OffsetAndMetadata(50, "", -1)})
    check(c.committed(tp) == 50, f"committed {c.committed(tp)}")
    c.close()
    c = consumer()
    first = next(iter(c))
    check(int(first.value) == 50 and first.offset == 50, f"after restart: {first.offset}")
    c.seek(tp, 10)
    check(next(iter(c)).offset == 10, "seek to 10")
    c.seek_to_end(tp)
    check(c.position(tp) == 100, f"end {c.position(tp)}")
    c.seek_to_beginning(tp)
    check(c.position(tp) == 0, f"beginning {c.position(tp)}")
    found = c.offsets_for_times({tp: t0 + 42_500})
    check(found[tp].offset == 43, f"offset for time: {found[tp]}")
    c.close()
    print("commit-seek: kafka-python idempotent gzip produce, commit, restart at the commit, seek, offsets for times", flush=True)


def scenario_minute(bootstrap, seconds=60):
    """A librdkafka producer and consumer running for a minute log no errors and lose nothing."""
    import logging

    from confluent_kafka import Consumer, Producer

    problems = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                problems.append(record.getMessage())

    log = logging.getLogger("rdkafka")
    log.addHandler(Catch())
    log.setLevel(logging.DEBUG)
    common = {"bootstrap.servers": bootstrap, "error_cb": lambda e: problems.append(str(e))}
    create(bootstrap, "minute", 3)
    p = Producer({**common, "acks": "all", "enable.idempotence": True, "linger.ms": 10, "logger": log})
    c = Consumer({**common, "group.id": "minute", "auto.offset.reset": "earliest", "logger": log})
    c.subscribe(["minute"])
    sent = 0
    failed = []
    received = set()
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(50):
            p.produce("minute", key=str(sent % 11).encode(), value=str(sent).encode(),
                      on_delivery=lambda err, msg: failed.append(err) if err else None)
            sent += 1
        p.poll(0)
        while True:
            m = c.poll(0.02)
            if m is None:
                break
            if m.error():
                problems.append(str(m.error()))
            else:
                received.add(int(m.value()))
    check(p.flush(30) == 0, "producer did not drain")
    deadline = time.time() + 30
    while len(received) < sent and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            received.add(int(m.value()))
    c.close()
    check(not failed, f"delivery failures: {failed[:3]}")
    check(not problems, f"librdkafka reported: {problems[:5]}")
    check(len(received) == sent, f"consumed {len(received)} of {sent}")
    print(f"minute: {sent} records produced and consumed over {seconds} s, no errors logged", flush=True)


SCENARIOS = {
    "codecs": scenario_codecs,
    "group": scenario_group,
    "admin": scenario_admin,
    "commit-seek": scenario_commit_seek,
    "times-refusals": scenario_times_and_refusals,
    "static": scenario_static_membership,
    "group-admin": scenario_group_admin,
    "alter-configs": scenario_alter_configs,
    "minute": scenario_minute,
    "nulls": scenario_nulls,
    "compact": scenario_compact,
    "compact-verify": scenario_compact_verify,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    a = ap.parse_args()
    SCENARIOS[a.scenario](a.bootstrap)
    print(f"ok {a.scenario}", flush=True)


if __name__ == "__main__":
    main()
