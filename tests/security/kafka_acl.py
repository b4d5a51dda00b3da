#!/usr/bin/env python3
"""One user's answers from Brook's Kafka listener, with confluent-kafka (librdkafka).

Logs in as --user with --mechanism (PLAIN, SCRAM-SHA-512, or none: anonymous), over TLS when
--ca is given, tries every operation of the authorization matrix and prints one JSON object:
operation -> "ok" or "denied" (anything else is printed as the error and fails the caller's
comparison). The caller (tests/security.rs) asks the native listener the same questions and
compares.
"""

import argparse
import json
import sys

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


def verdict(err):
    if err is None:
        return "ok"
    code = err.code() if isinstance(err, KafkaError) else None
    if code in DENIED:
        return "denied"
    return f"error: {err}"


def of_exception(e):
    if isinstance(e, KafkaException) and e.args:
        return verdict(e.args[0])
    return f"error: {e!r}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("--mechanism", default="none")
    ap.add_argument("--ca", default="")
    ap.add_argument("--login-only", action="store_true")
    a = ap.parse_args()

    conf = {"bootstrap.servers": a.bootstrap, "client.id": f"matrix-{a.user or 'anon'}"}
    sasl = a.mechanism != "none"
    if sasl:
        conf.update(
            {
                "sasl.mechanism": a.mechanism,
                "sasl.username": a.user,
                "sasl.password": a.password,
            }
        )
    if a.ca:
        conf["security.protocol"] = "SASL_SSL" if sasl else "SSL"
        conf["ssl.ca.location"] = a.ca
    elif sasl:
        conf["security.protocol"] = "SASL_PLAINTEXT"

    errors = []
    admin = AdminClient({**conf, "error_cb": errors.append})
    out = {}
    try:
        md = admin.list_topics(timeout=10)
    except KafkaException as e:
        # A refused login shows as an _AUTHENTICATION error event, the request then fails.
        why = [str(x) for x in errors if x.code() == KafkaError._AUTHENTICATION]
        print(json.dumps({"login": "; ".join(why) or of_exception(e)}))
        return
    out["login"] = "ok"
    if a.login_only:
        print(json.dumps(out))
        return
    out["list_sees_secret"] = "ok" if "secret" in md.topics else "denied"
    out["list_sees_telemetry"] = "ok" if "telemetry" in md.topics else "denied"

    for topic in ["telemetry", "secret"]:
        p = Producer({**conf, "message.timeout.ms": 10000, "acks": "all"})
        result = {}
        p.produce(topic, b"matrix", on_delivery=lambda err, msg: result.setdefault("e", err))
        p.flush(15)
        out[f"produce_{topic}"] = verdict(result.get("e", "no delivery report"))

    for topic in ["telemetry", "secret"]:
        # A subscription (the user's own group): librdkafka reports a topic it may not read
        # as a consumer error; an assignment would wait silently.
        c = Consumer(
            {
                **conf,
                "group.id": f"g-{a.user}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        c.subscribe([topic])
        answer = "error: nothing read in 15 s"
        for _ in range(30):
            m = c.poll(0.5)
            if m is None:
                continue
            answer = verdict(m.error())
            break
        c.close()
        out[f"consume_{topic}"] = answer

    name = f"new-{a.user or 'anon'}-{a.mechanism}-{'tls' if a.ca else 'plain'}"
    f = admin.create_topics([NewTopic(name, 1, 1)], operation_timeout=10)[name]
    try:
        f.result(15)
        out["create"] = "ok"
    except KafkaException as e:
        out["create"] = of_exception(e)

    f = admin.delete_topics(["scratch"], operation_timeout=10)["scratch"]
    try:
        f.result(15)
        out["delete_scratch"] = "ok"
    except KafkaException as e:
        v = of_exception(e)
        # Deleted already by an earlier client of this matrix: allowed all the same.
        out["delete_scratch"] = "ok" if "UNKNOWN_TOPIC" in v else v

    for group in [f"g-{a.user}", "g-other"]:
        c = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
        try:
            c.commit(offsets=[TopicPartition("telemetry", 0, 1)], asynchronous=False)
            out[f"commit_{'own' if group != 'g-other' else 'other'}"] = "ok"
        except KafkaException as e:
            out[f"commit_{'own' if group != 'g-other' else 'other'}"] = of_exception(e)
        c.close()

    try:
        r = admin.list_consumer_groups(request_timeout=10).result(15)
        out["list_groups"] = "denied" if r.errors else "ok"
    except KafkaException as e:
        out["list_groups"] = of_exception(e)

    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
