"""An agent session against gpuproxyd's /mcp with the official MCP Python SDK (tests/mcp.rs).

usage: agent.py URL TOKEN MODE SSH_PUBLIC_KEY   (MODE: auto | legacy)

Lists the tools, searches offers, rents the cheapest on-demand one (twice with one idempotency
key: one instance), reads it, runs a command on it (twice with one idempotency key: one command;
no agent runs there, so it stays queued), reads and lists its commands, lists instances,
destroys it, reads usage, and makes one bad call.
Prints one JSON object with what it saw; tests/mcp.rs checks it. Any protocol failure raises.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def structured(result):
    """A tool result's JSON (structuredContent, else the text block)."""
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def main(url, token, mode, ssh_key):
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        verify=False,
        timeout=httpx2.Timeout(60.0),
    )
    out = {}
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            out["protocol_version"] = client.protocol_version
            tools = await client.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["schemas_are_objects"] = all(t.input_schema.get("type") == "object" for t in tools.tools)

            found = await client.call_tool("search_offers", {"providers": ["vastai"], "sort": "price", "limit": 20})
            assert not found.is_error, found
            offers = [o for o in structured(found)["offers"] if not o["interruptible"]]
            out["offers_seen"] = len(offers)
            offer = offers[0]

            rent_args = {
                "offer_id": offer["id"],
                "image": "pytorch/pytorch:latest",
                "disk_gb": 20,
                "ssh_public_key": ssh_key,
                "idempotency_key": f"mcp-agent-rent-{mode}",
            }
            first = await client.call_tool("rent_instance", rent_args)
            assert not first.is_error, first
            again = await client.call_tool("rent_instance", rent_args)
            assert not again.is_error, again
            instance = structured(first)
            out["rented"] = instance["id"]
            out["rented_again"] = structured(again)["id"]
            out["rented_offer"] = instance.get("offer_id")

            got = await client.call_tool("get_instance", {"id": instance["id"]})
            assert not got.is_error, got
            out["status"] = structured(got)["status"]

            run_args = {
                "instance_id": instance["id"],
                "kind": "exec",
                "argv": ["nvidia-smi", "-L"],
                "timeout_s": 30,
                "idempotency_key": f"mcp-agent-command-{mode}",
            }
            ran = await client.call_tool("run_command", run_args)
            assert not ran.is_error, ran
            ran_again = await client.call_tool("run_command", run_args)
            assert not ran_again.is_error, ran_again
            out["command"] = structured(ran)["id"]
            out["command_again"] = structured(ran_again)["id"]
            got = await client.call_tool("get_command", {"instance_id": instance["id"], "command_id": out["command"]})
            assert not got.is_error, got
            out["command_status"] = structured(got)["status"]
            out["command_argv"] = structured(got)["argv"]
            cmds = await client.call_tool("list_commands", {"instance_id": instance["id"], "limit": 5})
            assert not cmds.is_error, cmds
            out["commands_listed"] = [c["id"] for c in structured(cmds)["commands"]]
            shell = await client.call_tool("run_command", {"instance_id": instance["id"], "kind": "shell", "argv": ["true"]})
            out["command_bad_error"] = structured(shell)["error"] if shell.is_error else None

            listed = await client.call_tool("list_instances", {"limit": 10})
            out["listed"] = [i["id"] for i in structured(listed)["instances"]]

            gone = await client.call_tool("destroy_instance", {"id": instance["id"], "idempotency_key": f"mcp-agent-destroy-{mode}"})
            assert not gone.is_error, gone
            out["destroyed_status"] = structured(gone)["status"]

            usage = await client.call_tool("get_usage", {"group_by": "instance"})
            assert not usage.is_error, usage
            out["usage_keys"] = sorted(structured(usage).keys())

            bad = await client.call_tool("rent_instance", {"offer_id": offer["id"], "disk_gb": 20})
            out["bad_is_error"] = bad.is_error
            out["bad_error"] = structured(bad)["error"]

            missing = await client.call_tool("get_instance", {"id": "no-such-instance"})
            out["missing_error"] = structured(missing)["error"]["code"] if missing.is_error else None
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
