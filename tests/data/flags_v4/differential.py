#!/usr/bin/env python3
"""Regenerates differential.jsonl: random `/flags?v=4` answers read by posthog-python, and the
flag events it sent.

Each line is one case: the `/flags` body a local mock answered, the reads made (single-flag
`get_feature_flag` calls and first reads from an `evaluate_flags` snapshot, for a few people
and groups, repeated so deduplication shows), and every `$feature_flag_called` and
`$experiment_exposure` posthog-python delivered to the mock's `/batch/`, in order, with the
flag properties (`$feature*`, `locally_evaluated`, `$groups`, `$experiment*` and the super
properties the case sets). Records are random over every reason code and rule type, valid and
invalid rule ids, present and missing variant keys, config versions 1 and 2, failed records
and now and then a field of the wrong type. A fresh client per case, so each case starts with
empty dedups.

    python3 differential.py /path/to/posthog-python N SEED > differential.jsonl

The posthog-python used for the checked-in file is 7.91.1 (the wheel from PyPI), with its
dependencies (requests, backoff, distro, typing-extensions, python-dateutil) installed.
"""
import gzip, json, logging, random, sys, threading, uuid, warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
from posthog import Posthog  # noqa: E402

R = random.Random(int(sys.argv[3]))
STATE = {"body": None, "events": []}


class Mock(BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        if self.path.startswith("/flags"):
            out = json.dumps(STATE["body"]).encode()
        else:
            STATE["events"].extend(json.loads(raw).get("batch", []))
            out = b'{"status": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


CODES = ["targeting_match", "experiment_split", "rollout_miss", "experiment_paused",
         "holdout", "no_condition_match", "future_code", "", None]
RULE_TYPES = ["targeted_release", "percentage_rollout", "experiment", "other", None]
RULES = [str(uuid.UUID(int=R.getrandbits(128))) for _ in range(2)] + ["rule-1", None]
VALUES = [True, False, "control", "test", "", None, 42, {"a": 1}]
SUPERS = ["$feature_flag_rule_id", "$feature_flag_reason", "$feature_flag_forced_variant",
          "$experiment_exposure_source", "$feature_flag_id", "$feature_flag",
          "$feature_flag_reason_code", "$feature_flag_variant_key", "team"]


def maybe(p, value):
    return value if R.random() < p else None


def record(key):
    value = R.choice(VALUES)
    code = R.choice(CODES)
    metadata = {
        "id": R.randint(1, 99),
        "version": R.randint(1, 9),
        "config_version": R.choice([2, 2, 2, 1, None]),
        "rule_id": R.choice(RULES),
        "rule_type": R.choice(RULE_TYPES),
        "variant_key": R.choice([value if isinstance(value, str) else "test", "control", None]),
        "has_experiment": R.choice([True, False, None]),
        "forced_variant": maybe(0.3, R.choice([True, False])),
        "experiment_id": maybe(0.3, R.randint(1, 50)),
        "payload": maybe(0.3, json.dumps({"p": R.randint(0, 9)})),
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    if R.random() < 0.35:
        # A well-formed experiment split, the outcome that sends an exposure.
        value = R.choice(["control", "test"])
        code = "experiment_split"
        metadata.update(config_version=2, rule_id=R.choice(RULES[:2]), rule_type="experiment",
                        variant_key=value)
    rec = {"key": key, "value": value, "failed": R.random() < 0.1, "metadata": metadata}
    if code is not None:
        rec["reason"] = {"code": code, "description": R.choice(["Matched", "Assigned"])}
    if R.random() < 0.05:
        rec["metadata"][R.choice(["rule_id", "variant_key", "config_version"])] = R.choice([5, [1], "x"])
    if R.random() < 0.1:
        rec = {"key": key, "enabled": R.choice([True, False]), "variant": R.choice(["test", None]),
               "reason": rec.get("reason"), "metadata": metadata}
    return rec


def case(port):
    keys = [f"k{i}" for i in range(R.randint(1, 3))]
    body = {"flags": {k: record(k) for k in keys}, "errorsWhileComputingFlags": R.random() < 0.1,
            "requestId": "req-" + str(R.randint(1, 9)), "evaluatedAt": R.choice([1700000000000, None])}
    body = {k: v for k, v in body.items() if v is not None}
    supers = {name: "super" for name in R.sample(SUPERS, R.randint(0, 3))}
    reads = []
    for _ in range(R.randint(1, 6)):
        read = {"method": R.choice(["get_feature_flag", "snapshot"]),
                "key": R.choice(keys + ["missing"]) if R.random() < 0.9 else "missing",
                "distinct_id": R.choice(["u1", "u2"]), "groups": {}}
        if R.random() < 0.3:
            read["groups"] = {"company": R.choice(["acme", "globex"])}
        reads.append(read)
    STATE["body"], STATE["events"] = body, []
    client = Posthog("phc_differential", host=f"http://127.0.0.1:{port}", sync_mode=True,
                     super_properties=supers or None)
    for read in reads:
        if read["method"] == "get_feature_flag":
            client.get_feature_flag(read["key"], read["distinct_id"], groups=read["groups"])
        else:
            client.evaluate_flags(read["distinct_id"], groups=read["groups"]).get_flag(read["key"])
    client.shutdown()
    events = []
    for e in STATE["events"]:
        if e["event"] not in ("$feature_flag_called", "$experiment_exposure"):
            continue
        props = {k: v for k, v in e["properties"].items()
                 if k.startswith("$feature") or k.startswith("$experiment")
                 or k in ("locally_evaluated", "$groups", "team")}
        events.append({"event": e["event"], "distinct_id": e["distinct_id"], "properties": props})
    return {"flags": body, "super_properties": supers, "reads": reads, "events": events}


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Mock)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for _ in range(int(sys.argv[2])):
        print(json.dumps(case(server.server_address[1]), sort_keys=True))
    server.shutdown()


main()
