"""Cold start: what a fresh ``python -c "import function_app"`` costs, in time and peak memory,
for our app, for a peer app with the same functions built on msgraph-sdk + azure-identity, and
for a bare ``import azure.functions`` (the floor every Python function app pays).

Each import runs in a fresh interpreter, interleaved (ours, peer, bare) over several rounds so
machine noise hits all three alike; the medians are compared as ratios, which is what travels
between machines. Peak memory is the child's ru_maxrss.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-bench"
OUT = ROOT / "bench" / "out"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
FIRST_REQUEST_IMPORTS = ", ".join(
    [
        "shared.flows.activity_queue",
        "shared.flows.push",
        "shared.store.storage",
        "azure.data.tables",
        "azure.storage.queue",
        "requests",
        "msal",
        "cryptography.hazmat.primitives.ciphers.aead",
    ]
)


def _environment() -> dict[str, str]:
    from local.dev_settings import new_secrets, service_environment

    env = service_environment(
        storage_connection_string="UseDevelopmentStorage=true",
        host_port=7071,
        crm_callback_url="http://127.0.0.1:9/crm",
        secrets_=new_secrets(),
    )
    return {**os.environ, **env, "PYTHONDONTWRITEBYTECODE": "1"}


PEAK = (
    "import resource, sys, time; t = time.perf_counter(); {import_line}; "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


def _run(python: str, import_line: str, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(import seconds, peak MiB) measured inside a fresh interpreter."""
    result = subprocess.run(
        [python, "-c", PEAK.format(import_line=import_line)],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, mib = result.stdout.split()
    return float(seconds), float(mib)


def main() -> None:
    if not (PEER_VENV / "bin" / "python").exists():
        raise SystemExit(
            "the peer's venv is missing: run `make bench` (it installs bench/requirements-peer.txt)"
        )
    env = _environment()
    ours_python = str(ROOT / ".venv" / "bin" / "python")
    cases = {
        "ours": (ours_python, "import function_app", ROOT),
        "peer": (str(PEER_VENV / "bin" / "python"), "import function_app", ROOT / "bench" / "peer_app"),
        "bare": (ours_python, "import azure.functions", ROOT),
        # What our lazy imports move out of the cold start: the start plus everything the first
        # push and its first Graph call import (flows, storage SDKs, requests, MSAL, AES-GCM).
        "ours_first_request": (ours_python, f"import function_app; import {FIRST_REQUEST_IMPORTS}", ROOT),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for python, line, cwd in cases.values():
        _run(python, line, cwd, env)  # warm the OS file cache once; every measured run is a fresh interpreter
    for _ in range(ROUNDS):
        for name, (python, line, cwd) in cases.items():
            samples[name].append(_run(python, line, cwd, env))
    median = {
        name: {
            "seconds": statistics.median(s for s, _ in runs),
            "peak_mib": statistics.median(m for _, m in runs),
        }
        for name, runs in samples.items()
    }
    result = {
        "rounds": ROUNDS,
        "median": median,
        "time_vs_peer": median["ours"]["seconds"] / median["peer"]["seconds"],
        "time_vs_bare": median["ours"]["seconds"] / median["bare"]["seconds"],
        "memory_vs_peer": median["ours"]["peak_mib"] / median["peer"]["peak_mib"],
        "memory_vs_bare": median["ours"]["peak_mib"] / median["bare"]["peak_mib"],
        "first_request_imports_seconds": median["ours_first_request"]["seconds"] - median["ours"]["seconds"],
        "start_plus_first_request_vs_peer": median["ours_first_request"]["seconds"] / median["peer"]["seconds"],
        "goals": {"time_vs_peer": "<= 0.5", "time_vs_bare": "<= 1.3"},
        "python": sys.version.split()[0],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cold_start.json").write_text(json.dumps(result, indent=2))
    print(
        f"cold start: ours/peer time {result['time_vs_peer']:.2f} (goal <= 0.5), ours/bare time "
        f"{result['time_vs_bare']:.2f} (goal <= 1.3), ours/peer memory {result['memory_vs_peer']:.2f}, "
        f"ours/bare memory {result['memory_vs_bare']:.2f}; medians ours {median['ours']['seconds'] * 1000:.0f} ms "
        f"{median['ours']['peak_mib']:.0f} MiB, peer {median['peer']['seconds'] * 1000:.0f} ms "
        f"{median['peer']['peak_mib']:.0f} MiB, bare {median['bare']['seconds'] * 1000:.0f} ms "
        f"{median['bare']['peak_mib']:.0f} MiB; the first request's lazy imports "
        f"{result['first_request_imports_seconds'] * 1000:.0f} ms (start + first request "
        f"{median['ours_first_request']['seconds'] * 1000:.0f} ms, "
        f"{result['start_plus_first_request_vs_peer']:.2f} of the peer's start)"
    )


if __name__ == "__main__":
    main()
