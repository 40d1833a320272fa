"""The adapters one process needs, built on first use and reused by every invocation.

Triggers get them from ``services.get()``; tests build a ``Services`` of their own."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

from shared.rules import settings as settings_module
from shared.rules.settings import Settings


@dataclass
class Services:
    settings: Settings

    @cached_property
    def storage(self):
        from shared.store.storage import Storage

        return Storage(self.settings.storage)

    @cached_property
    def identity(self):
        from shared.outlook.identity import Identity

        return Identity(self.settings, self.storage)

    @cached_property
    def graph(self):
        from shared.outlook.graph import GraphClient

        return GraphClient(self.settings.graph_api_base)

    @cached_property
    def http(self):
        """A pooled session for calls to the CRM."""
        import requests

        return requests.Session()


@cache
def get() -> Services:
    return Services(settings_module.get())
