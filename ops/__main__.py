"""python -m ops <command>; see RUNBOOK.md. Settings come from the environment:

- ``AzureWebJobsStorage`` (or the identity-based ``AzureWebJobsStorage__accountName`` family, as
  the app reads it) for ``poison`` and ``users``;
- ``SERVICE_URL`` (the app's ``PUBLIC_BASE_URL``) and ``CRM_SHARED_SECRET`` for ``release-held``
  and ``status`` (the first secret of a comma-separated list signs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ops import contract, poison, users


def _storage() -> Any:
    from shared.rules.settings import storage_settings
    from shared.store.storage import Storage

    return Storage(storage_settings(os.environ))


def _service() -> tuple[str, str]:
    url = os.environ.get("SERVICE_URL") or os.environ.get("PUBLIC_BASE_URL")
    secret = (os.environ.get("CRM_SHARED_SECRET") or "").split(",")[0].strip()
    if not url or not secret:
        raise SystemExit("set SERVICE_URL (the app's PUBLIC_BASE_URL) and CRM_SHARED_SECRET")
    return url, secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops", description="Operator's tools (RUNBOOK.md)")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("poison", help="inspect or replay poison queues")
    p_sub = p.add_subparsers(dest="action", required=True)
    p_sub.add_parser("counts", help="messages in every poison queue")
    show = p_sub.add_parser("show", help="the messages of one poison queue")
    show.add_argument("queue")
    show.add_argument("--limit", type=int, default=32)
    show.add_argument("--json", action="store_true")
    again = p_sub.add_parser("replay", help="move poison messages back to their work queue")
    again.add_argument("queue")
    chosen = again.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--id", action="append", dest="ids", help="a message id (repeatable)")
    chosen.add_argument("--all", action="store_true")
    u = commands.add_parser("users", help="users in a state, paging through the tables")
    u.add_argument("state", choices=users.STATES)
    r = commands.add_parser("release-held", help="release a user's held deletions (signed reconcile)")
    r.add_argument("--tenant", required=True)
    r.add_argument("--user", required=True)
    s = commands.add_parser("status", help="a user's status through the signed contract")
    s.add_argument("--tenant", required=True)
    s.add_argument("--user", required=True)
    args = parser.parse_args(argv)

    if args.command == "poison":
        storage = _storage()
        if args.action == "counts":
            for name, count in poison.counts(storage).items():
                print(f"{name}\t{count}")
        elif args.action == "show":
            for item in poison.peek(storage, args.queue, args.limit):
                print(json.dumps(poison.describe(item), ensure_ascii=False) if args.json else item.summary())
        else:
            moved = poison.replay(storage, args.queue, None if args.all else set(args.ids))
            print(f"replayed {len(moved)} message(s) to {poison.work_queue(args.queue)}: {' '.join(moved)}")
            if args.ids and set(args.ids) - set(moved):
                print(f"not found: {' '.join(sorted(set(args.ids) - set(moved)))}", file=sys.stderr)
                return 1
    elif args.command == "users":
        for row in users.by_state(_storage(), args.state):
            print(row.line())
    else:
        url, secret = _service()
        call = contract.release_held if args.command == "release-held" else contract.status
        answer = call(url, secret, args.tenant, args.user)
        print(answer.status_code, answer.text)
        return 0 if answer.status_code < 300 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
