#!/usr/bin/env python3
"""Regenerates device_bucketing.json: what posthog-python evaluates locally for anonymous
posthog-js visitors (an anonymous distinct id and a device id, as the posthog-js cookie holds
them) on a multivariate flag bucketed by device id.

Each case records the variant posthog-python 7.91.1 answers with `device_id` (the flag's
`bucketing_identifier` is `device_id`), and, for contrast, the variant of the same flag
bucketed by distinct id: the cases are picked so that the two differ for most of them, so a
test that evaluated by distinct id would fail.

    python3 device_bucketing.py /path/to/posthog-python > device_bucketing.json

The checked-in file was made with the posthog 7.91.1 wheel from PyPI (unzipped; its
dependencies requests, backoff, distro, typing-extensions, python-dateutil installed).
"""
import copy, json, logging, sys, warnings

sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
from posthog.client import Client

FLAG = {
    "id": 71,
    "key": "device-experiment",
    "active": True,
    "bucketing_identifier": "device_id",
    "filters": {
        "groups": [{"properties": [], "rollout_percentage": 100}],
        "multivariate": {
            "variants": [
                {"key": "control", "rollout_percentage": 34},
                {"key": "test-a", "rollout_percentage": 33},
                {"key": "test-b", "rollout_percentage": 33},
            ]
        },
    },
}


def evaluate(client, flag, distinct_id, device_id):
    client.feature_flags = [flag]
    client.group_type_mapping = {}
    client.cohorts = {}
    return client.get_feature_flag(
        flag["key"],
        distinct_id,
        device_id=device_id,
        only_evaluate_locally=True,
        send_feature_flag_events=False,
    )


def main():
    client = Client("phc_test", personal_api_key=None)
    by_distinct = copy.deepcopy(FLAG)
    del by_distinct["bucketing_identifier"]
    cases = []
    for i in range(24):
        distinct_id = f"0190a1b2-anon-{i:04d}"
        device_id = f"0190a1b2-device-{i:04d}"
        cases.append(
            {
                "distinct_id": distinct_id,
                "device_id": device_id,
                "variant": evaluate(client, FLAG, distinct_id, device_id),
                "variant_by_distinct_id": evaluate(client, by_distinct, distinct_id, device_id),
            }
        )
    json.dump({"posthog_python": "7.91.1", "definitions": {"flags": [FLAG],
               "group_type_mapping": {}, "cohorts": {}}, "cases": cases}, sys.stdout, indent=1)
    print()


main()
