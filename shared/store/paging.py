"""Reading a table page by page: one page of rows in memory at a time, only the columns asked for,
following the service's continuation tokens (``x-ms-continuation-NextPartitionKey`` /
``NextRowKey``, which the SDK hands back as ``continuation_token``), so a scan of 100,000 rows
costs ~100 requests and the memory of one page. A caller may stop and resume from ``Page.resume``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shared.store import tables

PAGE_SIZE = 1000  # the most Table Storage returns in one response


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    resume: Any  # the continuation token of the next page (None after the last one)


def pages(
    table: Any,
    query: str | None,
    parameters: dict[str, Any] | None,
    select: list[str],
    *,
    page_size: int = PAGE_SIZE,
    what: str = "reading a table",
    resume: Any = None,
) -> Iterator[Page]:
    """Yield the rows matching ``query`` (None: every row) one service page at a time."""
    with tables.storage_errors(what):
        if query is None:
            found = table.list_entities(select=select, results_per_page=page_size)
        else:
            found = table.query_entities(
                query, parameters=parameters or {}, select=select, results_per_page=page_size
            )
        pager = found.by_page(continuation_token=resume)
    while True:
        with tables.storage_errors(what):
            try:
                page = next(pager)
            except StopIteration:
                return
            rows = list(page)
        yield Page(rows, pager.continuation_token)
        if pager.continuation_token is None:
            return
