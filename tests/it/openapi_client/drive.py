"""Drives a running gpuproxyd with the client openapi-python-client generated from
openapi/openapi.json: search offers, rent one, read the instance, list, destroy, read again.
Prints a JSON report; any unexpected status raises (the generated client checks them).

usage: drive.py GENERATED_DIR BASE_URL TOKEN
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

from gpuproxyd_api_client import AuthenticatedClient  # noqa: E402
from gpuproxyd_api_client.api.instances import (  # noqa: E402
    destroy_instance,
    get_instance,
    list_instances,
    rent_instance,
)
from gpuproxyd_api_client.api.offers import list_offers  # noqa: E402
from gpuproxyd_api_client.models import Error  # noqa: E402

url, token = sys.argv[2], sys.argv[3]
# the test daemon's certificate is made by the test: loopback only
client = AuthenticatedClient(base_url=url, token=token, verify_ssl=False, raise_on_unexpected_status=True)
report = {}


def parsed(resp, what):
    if isinstance(resp.parsed, Error) or resp.parsed is None:
        raise SystemExit(f"{what}: {resp.status_code} {resp.content!r}")
    report.setdefault("statuses", {})[what] = int(resp.status_code)
    return resp.parsed.to_dict()


offers = parsed(list_offers.sync_detailed(client=client, providers="vastai", limit=5), "offers")
report["offers"] = len(offers["offers"])
report["offer_status"] = offers["status"]
offer = next(o for o in offers["offers"] if o.get("available", True))
body = {"offer_id": offer["id"], "image": "ubuntu:22.04", "disk_gb": 20, "max_duration_hours": 1}
rented = parsed(rent_instance.sync_detailed(client=client, body=body, idempotency_key="generated-client-1"), "rent")
again = parsed(rent_instance.sync_detailed(client=client, body=body, idempotency_key="generated-client-1"), "rent_again")
report["rented"] = {"id": rented["id"], "offer_id": rented["offer_id"], "status": rented["status"]}
report["replayed_same"] = again["id"] == rented["id"]
shown = parsed(get_instance.sync_detailed(rented["id"], client=client), "get")
report["shown"] = {"id": shown["id"], "events": len(shown.get("events", []))}
listed = parsed(list_instances.sync_detailed(client=client, limit=10), "list")
report["listed"] = [i["id"] for i in listed["instances"]]
gone = parsed(destroy_instance.sync_detailed(rented["id"], client=client), "destroy")
report["destroyed"] = gone["status"]
print(json.dumps(report))
