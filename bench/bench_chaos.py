"""Chaos benchmark (``make bench``): the full chaos run of tests/support/chaos.py - 2,000
activities of mixed creates, updates, cancels and deletions through the dev host while Graph
answers 10 % 429, 5 % 503, 2 % dropped connections and 1 % lost-answer creates, Graph is down
for 5 minutes, storage for 60 s, one of two dev hosts on the same queues is killed (-9) once, and
users move, edit and delete 5 % of our events in Outlook (issue 21). Prints one result line and
writes bench/out/chaos.json. The reduced run is tests/e2e/test_chaos.py."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out" / "chaos.json"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.chaos import ChaosConfig, run_chaos, standalone_stack, summary

    config = ChaosConfig(
        activities=int(os.environ.get("CHAOS_ACTIVITIES", "2000")),
        users=int(os.environ.get("CHAOS_USERS", "40")),
        tenants=4,
        senders=16,
        settle_timeout=1800.0,
        max_backlog=int(os.environ.get("CHAOS_MAX_BACKLOG", "300")),
        graph_outage_seconds=300,
        storage_outage_seconds=60,
        user_edit_share=0.05,
    )
    verbose = os.environ.get("CHAOS_VERBOSE") == "1"
    with tempfile.TemporaryDirectory(prefix="chaos-azurite-") as workdir:
        with standalone_stack(Path(workdir)) as (stack, azurite):
            report = run_chaos(
                stack, config, storage=azurite, log=print if verbose else (lambda _: None)
            )
            if not report["ok"]:  # every host's log (the killed one's and the peer's too), to find why
                hosts = [*stack.__dict__.get("previous_hosts", []), stack.host]
                OUT.parent.mkdir(parents=True, exist_ok=True)
                (OUT.parent / "chaos-hosts.log").write_text("".join(line for h in hosts for line in h.output))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(summary(report))


if __name__ == "__main__":
    main()
