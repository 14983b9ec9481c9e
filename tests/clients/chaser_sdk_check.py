#!/usr/bin/env python3
"""Drives sessiond with the official chaser-sdk client, as a user of that SDK would.

Usage: CHASER_BASE_URL=http://host:port CHASER_API_KEY=sk_... python chaser_sdk_check.py
Exits non-zero (with the failing call) when sessiond does not behave as the SDK expects.
"""
import os
import sys

import chaser_sdk
from chaser_sdk import ChaserClient
from chaser_sdk.errors import ChaserApiError

SESSION_KEYS = {"id", "created_at", "status", "session_type", "endpoints", "workspace_id",
                "active_connection_leases", "persistence"}


def main():
    client = ChaserClient(base_url=os.environ["CHASER_BASE_URL"], api_key=os.environ["CHASER_API_KEY"])

    # Keys and accounts.
    created = client.keys.create(name="sdk-check", scopes=["sessions.read"])
    assert created["key"].startswith("sk_") and created["name"] == "sdk-check", created
    assert any(k["id"] == created["id"] for k in client.keys.list())
    account = client.accounts.current()
    assert account["name"] == "personal" and account["personal"] is True, account

    # Workspaces.
    ws = client.workspaces.create(name="sdk-workspace", session_type="browser")
    assert ws["id"].startswith("ws-") and ws["name"] == "sdk-workspace", ws
    assert any(w["id"] == ws["id"] for w in client.workspaces.list())
    renamed = client.workspaces.rename(ws["id"], "sdk-renamed")
    assert renamed == {"id": ws["id"], "name": "sdk-renamed"}, renamed

    # Sessions.
    s = client.sessions.create(session_type="browser", workspace=ws["id"])
    assert set(s) == SESSION_KEYS, s
    assert s["workspace_id"] == ws["id"] and s["persistence"] is True, s
    ready = client.sessions.wait_until_ready(s["id"], timeout_secs=10, interval_secs=0.2)
    assert ready["status"] in ("active", "running", "ready"), ready
    assert client.sessions.get(s["id"])["id"] == s["id"]
    assert any(x["id"] == s["id"] for x in client.sessions.list())
    page = client.sessions.list_page()
    assert page["total"] >= 1 and "sessions" in page, page
    try:
        client.sessions.create(session_type="browser", workspace=ws["id"])
        raise AssertionError("a second persistent session on one workspace was accepted")
    except ChaserApiError as e:
        assert e.status == 409 and e.code == "conflict" and e.request_id, (e.status, e.code, e.request_id)
    try:
        client.sessions.get("00000000-0000-4000-8000-000000000000")
        raise AssertionError("a missing session was found")
    except ChaserApiError as e:
        assert e.status == 404 and e.code == "not_found", (e.status, e.code)
    client.sessions.terminate(s["id"])
    client.sessions.terminate(s["id"], force=True)
    assert client.sessions.get(s["id"])["status"] == "terminated"

    others = [client.sessions.create(session_type="sandbox")["id"] for _ in range(2)]
    result = client.sessions.bulk_terminate({"ids": others + ["no-such-session"]})
    assert sorted(result["terminated"]) == sorted(others), result
    assert result["failed"] == [{"id": "no-such-session", "code": "not_found", "message": "Session not found"}], result

    client.workspaces.delete(ws["id"])
    assert all(w["id"] != ws["id"] for w in client.workspaces.list())

    # Audit.
    events = client.audit.list(resource_type="session", limit=50)
    assert any(e["action"] == "session.created" and e["resource_id"] == s["id"] for e in events), events
    assert client.audit.list(action="workspace.renamed", resource_id=ws["id"])[0]["resource_id"] == ws["id"]

    # A scoped key: the SDK surfaces 403 forbidden.
    reader = ChaserClient(base_url=os.environ["CHASER_BASE_URL"], api_key=created["key"])
    reader.sessions.get(others[0])
    try:
        reader.sessions.create(session_type="browser")
        raise AssertionError("a read-only key created a session")
    except ChaserApiError as e:
        assert e.status == 403 and e.code == "forbidden", (e.status, e.code)

    print(f"chaser-sdk {getattr(chaser_sdk, '__version__', '0.2.1')}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
