"""``make bench``: run every benchmark in bench/ and print one result line each.

Benchmarks are added here as their features land (see BENCHMARKS.md); none are timed tests."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def main() -> None:
    found = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_")
    )
    if not found:
        print("no benchmarks yet")
    for name in found:
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main()
