#!/usr/bin/env python3
"""Regenerates differential.jsonl: random flag definitions evaluated locally by posthog-python.

Each line is one definitions document, the contexts it was evaluated for, and what
posthog-python's own local evaluation (`Client._compute_flag_locally` and
`_compute_payload_locally`) answered for every flag and context: a value and payload, or
inconclusive. Property filters use only `exact` on lower-case strings, so any correct operator
engine agrees with them. Evaluations that reached Python's recursion limit (its answer then
depends on the interpreter's stack depth) are left out.

    python3 differential.py /path/to/posthog-python N SEED > differential.jsonl

The posthog-python used for the checked-in file is 7.91.1 (the wheel from PyPI), with its
dependencies (requests, backoff, distro, typing-extensions, python-dateutil) installed.
"""
import json, random, sys, warnings, logging
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
from posthog.client import Client
from posthog.feature_flags import InconclusiveMatchError, RequiresServerEvaluation
import posthog.feature_flags as ff

DEPTH = [0, 0]  # current, max


def _track(fn):
    def wrapper(*args, **kwargs):
        DEPTH[0] += 1
        DEPTH[1] = max(DEPTH[1], DEPTH[0])
        try:
            return fn(*args, **kwargs)
        finally:
            DEPTH[0] -= 1
    return wrapper


ff.match_feature_flag_properties = _track(ff.match_feature_flag_properties)
ff.match_cohort = _track(ff.match_cohort)

R = random.Random(int(sys.argv[3]))
PROPS = {"plan": ["pro", "free", "team"], "region": ["eu", "us"], "tier": ["a", "b"]}
class Timeout(BaseException):
    pass

FLAG_KEYS = [f"f{i}" for i in range(6)]

def person_prop(kind="person"):
    k = R.choice(list(PROPS) + (["$group_key"] if kind == "group" else ["distinct_id"]))
    vals = PROPS.get(k, ["acme", "c2", "t1", "user_1", "user_2"])
    p = {"key": k, "value": R.choice(vals), "operator": "exact", "type": kind}
    if R.random() < 0.05:
        p["operator"] = None
    return p

def cohort_ref():
    p = {"key": "id", "type": "cohort", "value": R.choice([1, 2, 3, "4", 99])}
    r = R.random()
    if r < 0.15: p["operator"] = "not_in"
    elif r < 0.2: p["operator"] = "gt"
    elif r < 0.35: p["operator"] = "in"
    return p

def dep_ref(chains):
    key = R.choice(FLAG_KEYS + ["ghost"])
    p = {"key": key, "type": "flag", "operator": "flag_evaluates_to",
         "value": R.choice([True, False, "a", "b", "A", "holdout-5"])}
    r = R.random()
    if r < 0.65: p["dependency_chain"] = chains.get(key, [key])
    elif r < 0.75: p["dependency_chain"] = []
    elif r < 0.8: pass
    elif r < 0.9: p["dependency_chain"] = ["ghost", key]
    else: p["dependency_chain"] = [R.choice(FLAG_KEYS), key]
    if R.random() < 0.05: p["operator"] = "exact"
    if R.random() < 0.03: p["value"] = None
    return p

def entry(depth, chains, allow_flags):
    r = R.random()
    if r < 0.5: e = person_prop()
    elif r < 0.7: e = cohort_ref()
    elif r < 0.8 and depth < 2: e = group(depth + 1, chains, allow_flags)
    elif r < 0.85 and allow_flags: e = dep_ref(chains)
    elif r < 0.87: e = R.choice([5, {}, {"type": "XOR", "values": []}])
    else: e = person_prop()
    if isinstance(e, dict) and "type" in e and e.get("type") not in ("AND", "OR") and R.random() < 0.25:
        e["negation"] = True
    return e

def group(depth, chains, allow_flags):
    if R.random() < 0.05: return {}
    return {"type": R.choice(["AND", "OR"]),
            "values": [entry(depth, chains, allow_flags) for _ in range(R.randint(0, 3))]}

def condition(chains, variants):
    c = {}
    r = R.random()
    if r < 0.15: c["aggregation_group_type_index"] = R.choice([0, 1, None, 7])
    props = []
    for _ in range(R.choice([0, 0, 1, 1, 2, 3])):
        x = R.random()
        if x < 0.45: props.append(person_prop(R.choice(["person", "person", "group"])))
        elif x < 0.7: props.append(cohort_ref())
        elif x < 0.95: props.append(dep_ref(chains))
        else: props.append(7)
    c["properties"] = props
    c["rollout_percentage"] = R.choice([None, 0, 30, 50, 100, 100, 12.5])
    if R.random() < 0.2: c["variant"] = R.choice(variants + ["zzz", ""]) if variants else "zzz"
    return c

def flag(key, chains):
    filters = {}
    variants = []
    if R.random() < 0.5:
        n = R.randint(1, 3)
        variants = R.sample(["a", "b", "c", "A"], n)
        splits = [R.choice([10, 20, 50, 30]) for _ in variants]
        mv = [{"key": v, "rollout_percentage": s} for v, s in zip(variants, splits)]
        if R.random() < 0.05: mv.append({"key": "", "rollout_percentage": 20})
        filters["multivariate"] = {"variants": mv}
    filters["groups"] = [condition(chains, variants) for _ in range(R.randint(0, 3))]
    if R.random() < 0.3: filters["aggregation_group_type_index"] = R.choice([0, 1, 9])
    if R.random() < 0.3: filters["early_exit"] = True
    if R.random() < 0.1: filters["holdout"] = {"id": 5, "exclusion_percentage": R.choice([0, 20, 50, 100])}
    if R.random() < 0.06: filters["feature_enrollment"] = True
    if R.random() < 0.08: filters["bucketing_identifier"] = "device_id"
    payloads = {}
    for v in ["true", "false"] + variants + ["holdout-5"]:
        if R.random() < 0.4: payloads[v] = json.dumps({"v": v})
    filters["payloads"] = payloads
    return {"id": R.randint(1, 100), "key": key, "active": R.random() < 0.9,
            "ensure_experience_continuity": R.random() < 0.04, "filters": filters}

def real_chains(flags):
    deps = {}
    for f in flags:
        ks = set()
        for c in f["filters"]["groups"]:
            for p in c["properties"]:
                if isinstance(p, dict) and p.get("type") == "flag": ks.add(p["key"])
        deps[f["key"]] = ks
    chains = {}
    for k in deps:
        order, state, ok = [], {}, [True]
        def visit(x):
            if state.get(x) == 1: ok[0] = False; return
            if state.get(x) == 2: return
            state[x] = 1
            for y in sorted(deps.get(x, ())): visit(y)
            state[x] = 2; order.append(x)
        visit(k)
        chains[k] = order if ok[0] else []
    return chains

def document():
    chains = {}
    cohorts = {str(i): group(0, chains, True) for i in (1, 2, 3, 4) if R.random() < 0.9}
    flags = [flag(k, chains) for k in FLAG_KEYS]
    chains.update(real_chains(flags))
    # second pass: regenerate with sensible chains
    flags = [flag(k, chains) for k in FLAG_KEYS]
    chains = real_chains(flags)
    for f in flags:
        for c in f["filters"]["groups"]:
            for p in c["properties"]:
                if isinstance(p, dict) and p.get("type") == "flag" and R.random() < 0.7 and p["key"] in chains:
                    p["dependency_chain"] = chains[p["key"]]
    return {"flags": flags, "group_type_mapping": {"0": "company", "1": "team"}, "cohorts": cohorts,
            "property_matching_version": R.choice([1, 2])}

def context():
    person = {}
    for k, vals in PROPS.items():
        if R.random() < 0.7: person[k] = R.choice(vals)
    for k in FLAG_KEYS:
        if R.random() < 0.1: person[f"$feature_enrollment/{k}"] = R.choice([True, "true", False])
    if R.random() < 0.05: person["distinct_id"] = "user_1"
    groups, gprops = {}, {}
    for g, keys in (("company", ["acme", "c2"]), ("team", ["t1", "t2"])):
        if R.random() < 0.6: groups[g] = R.choice(keys)
        if R.random() < 0.6:
            gprops[g] = {k: R.choice(v) for k, v in PROPS.items() if R.random() < 0.7}
    return {"distinct_id": f"user_{R.randint(0, 30)}", "device_id": R.choice([None, "", "dev_1", "dev_2"]),
            "person_properties": person, "groups": groups, "group_properties": gprops}

def evaluate(client, key, ctx):
    person = client._person_properties_for_local_evaluation(ctx["distinct_id"], ctx["person_properties"])
    _, gprops = client._add_local_person_and_group_properties(ctx["groups"], person, ctx["group_properties"])
    flag = client.feature_flags_by_key.get(key)
    DEPTH[0] = DEPTH[1] = 0
    try:
        value = client._compute_flag_locally(flag, ctx["distinct_id"], groups=ctx["groups"],
            person_properties=person, group_properties=gprops, device_id=ctx["device_id"])
    except (InconclusiveMatchError, RequiresServerEvaluation):
        return {"inconclusive": True}
    except Timeout:
        raise
    except Exception as e:
        # An unexpected error: inconclusive, unless it came from the recursion limit.
        if DEPTH[1] > 30:
            return {"inconclusive": True, "depth": DEPTH[1]}
        return {"inconclusive": True, "unexpected": type(e).__name__}
    result = {"value": value, "payload": client._compute_payload_locally(key, value)}
    if DEPTH[1] > 30:
        result["depth"] = DEPTH[1]
    return result

def main():
    n = int(sys.argv[2])
    client = Client("phc_test", personal_api_key=None)
    out = []
    import signal
    def on_alarm(*_): raise Timeout()
    signal.signal(signal.SIGALRM, on_alarm)
    skipped = 0
    while len(out) < n:
        doc = document()
        client.feature_flags = doc["flags"]
        client.group_type_mapping = doc["group_type_mapping"]
        client.cohorts = doc["cohorts"]
        client._property_matching_version = doc["property_matching_version"]
        contexts, results = [], []
        signal.alarm(2)
        try:
            for _ in range(8):
                ctx = context()
                contexts.append(ctx)
                for key in FLAG_KEYS:
                    result = evaluate(client, key, ctx)
                    if "depth" in result:
                        continue
                    result.pop("unexpected", None)
                    results.append({"context": len(contexts) - 1, "key": key, **result})
        except Timeout:
            skipped += 1
            continue
        finally:
            signal.alarm(0)
        out.append({"definitions": doc, "contexts": contexts, "results": results})
    print("skipped", skipped, file=sys.stderr)
    for d in out:
        print(json.dumps(d, separators=(",", ":")))

main()
