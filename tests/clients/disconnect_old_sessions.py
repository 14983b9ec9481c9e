#!/usr/bin/env python3
"""Disconnect active workspace sessions older than N hours through the NeoSC API.

Usage: NEOSC_URL=http://host:port NEOSC_TOKEN=<admin token> disconnect_old_sessions.py --hours 8 [--dry-run]
"""
import argparse
import json
import os
import sys
import urllib.request
from datetime import datetime, timedelta, timezone

BASE_URL = os.environ.get("NEOSC_URL", "http://localhost:8000").rstrip("/")
TOKEN = os.environ.get("NEOSC_TOKEN", "")


def api(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{BASE_URL}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    cutoff = datetime.now(timezone.utc) - timedelta(hours=args.hours)
    disconnected = 0
    for s in api("GET", "/api/admin/sessions?status=active"):
        started = datetime.fromisoformat(s["started_at"].replace("Z", "+00:00"))
        if started >= cutoff:
            continue
        print(f"disconnecting {s['id']} ({s['user_email']}, {s['workspace_name']}, started {s['started_at']})")
        if not args.dry_run:
            api("POST", f"/api/admin/sessions/{s['id']}/action", {"action": "disconnect"})
            disconnected += 1
    print(f"Disconnected {disconnected} session(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
