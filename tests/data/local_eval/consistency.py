#!/usr/bin/env python3
"""Regenerates the consistency tables in this directory.

The bucketing hash is reimplemented here (sha1 of "<key>.<id><salt>", first 15 hex digits over
0xFFFFFFFFFFFFFFF) so the tables do not depend on posthog-python. Pass the path of
posthog-python's posthog/test/test_feature_flags.py to cross-check both tables against the
expected lists of its TestConsistency class.

    python3 consistency.py [path/to/test_feature_flags.py]
"""
import ast
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE = float(0xFFFFFFFFFFFFFFF)


def bucket(key, value, salt=""):
    digest = hashlib.sha1(f"{key}.{value}{salt}".encode("utf-8")).hexdigest()
    return int(digest[:15], 16) / SCALE


def simple_table():
    flag = {
        "id": 1,
        "key": "simple-flag",
        "active": True,
        "filters": {"groups": [{"properties": [], "rollout_percentage": 45}]},
    }
    results = [bucket("simple-flag", f"distinct_id_{i}") <= 0.45 for i in range(1000)]
    return flag, results


VARIANTS = [
    ("first-variant", 50),
    ("second-variant", 20),
    ("third-variant", 20),
    ("fourth-variant", 5),
    ("fifth-variant", 5),
]


def multivariate_table():
    flag = {
        "id": 1,
        "key": "multivariate-flag",
        "active": True,
        "filters": {
            "groups": [{"properties": [], "rollout_percentage": 55}],
            "multivariate": {
                "variants": [{"key": k, "rollout_percentage": p} for k, p in VARIANTS]
            },
        },
    }
    results = []
    for i in range(1000):
        distinct_id = f"distinct_id_{i}"
        if bucket("multivariate-flag", distinct_id) > 0.55:
            results.append(False)
            continue
        h = bucket("multivariate-flag", distinct_id, "variant")
        low, chosen = 0, True
        for key, pct in VARIANTS:
            high = low + pct / 100
            if low <= h < high:
                chosen = key
                break
            low = high
        results.append(chosen)
    return flag, results


def expected_lists(path):
    """The `results = [...]` lists of the two consistency tests, in file order."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in (
            "test_simple_flag_consistency",
            "test_multivariate_flag_consistency",
        ):
            for stmt in ast.walk(node):
                if (
                    isinstance(stmt, ast.Assign)
                    and getattr(stmt.targets[0], "id", None) == "results"
                ):
                    found[node.name] = ast.literal_eval(stmt.value)
    return found


def main():
    simple = simple_table()
    multi = multivariate_table()
    if len(sys.argv) > 1:
        found = expected_lists(sys.argv[1])
        assert found["test_simple_flag_consistency"] == simple[1], "simple table differs"
        assert found["test_multivariate_flag_consistency"] == multi[1], "multivariate differs"
        print("both tables agree with", sys.argv[1])
    for name, (flag, results) in (
        ("simple_flag_consistency.json", simple),
        ("multivariate_flag_consistency.json", multi),
    ):
        document = {
            "definitions": {"flags": [flag], "group_type_mapping": {}, "cohorts": {}},
            "distinct_id_format": "distinct_id_{i}",
            "results": results,
        }
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as out:
            json.dump(document, out, indent=1)
            out.write("\n")


if __name__ == "__main__":
    main()
