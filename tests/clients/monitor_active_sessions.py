#!/usr/bin/env python3
"""Monitor active workspace sessions through the NeoSC API.

Usage: NEOSC_URL=http://host:port NEOSC_TOKEN=<admin token> monitor_active_sessions.py [--once] [--interval 30]
Prints one line per active session: id, user, workspace, start time and age.
"""
import argparse
import json
import os
import sys
import time
import urllib.request
from datetime import datetime, timezone

BASE_URL = os.environ.get("NEOSC_URL", "http://localhost:8000").rstrip("/")
TOKEN = os.environ.get("NEOSC_TOKEN", "")


def api_get(path):
    req = urllib.request.Request(f"{BASE_URL}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def show():
    sessions = api_get("/api/admin/sessions?status=active")
    stats = api_get("/api/stats")
    now = datetime.now(timezone.utc)
    print(f"{stats['active_sessions']} active session(s), {stats['total_workspaces']} workspaces, {stats['total_users']} users")
    for s in sessions:
        started = datetime.fromisoformat(s["started_at"].replace("Z", "+00:00"))
        age = int((now - started).total_seconds() // 60)
        print(f"{s['id']}  {s['user_email']:<30} {s['workspace_name']:<24} {s['started_at']}  {age} min  {s['ip_address']}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--interval", type=int, default=30)
    args = parser.parse_args()
    while True:
        show()
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
