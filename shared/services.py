"""The adapters one process needs, built on first use and reused by every invocation.

This is the composition root of the adapters: triggers get the process's one ``AppServices`` from
``services.get()`` and hand it to a flow, which sees it only as ``shared.ports.Services``; tests
build an ``AppServices`` of their own, or a fake that satisfies the same ports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, cached_property
from typing import TYPE_CHECKING

from shared.rules import settings as settings_module
from shared.rules.settings import Settings

if TYPE_CHECKING:  # the adapters are imported on first use, never at cold start
    import requests

    from shared.outlook.graph import GraphClient
    from shared.outlook.identity import Identity
    from shared.store.storage import Storage


@dataclass
class AppServices:
    """The real adapters behind ``shared.ports.Services``, each built on first use."""

    settings: Settings

    @cached_property
    def storage(self) -> Storage:
        from shared.store.storage import Storage

        return Storage(self.settings.storage)

    @cached_property
    def identity(self) -> Identity:
        from shared.outlook.identity import Identity

        return Identity(self.settings, self.storage)

    @cached_property
    def graph(self) -> GraphClient:
        from shared.outlook.graph import GraphClient

        return GraphClient(self.settings.graph_api_base)

    @cached_property
    def http(self) -> requests.Session:
        """A pooled session for calls to the CRM."""
        import requests

        return requests.Session()

    def now(self) -> datetime:
        return datetime.now(UTC)


@cache
def get() -> AppServices:
    return AppServices(settings_module.get())
