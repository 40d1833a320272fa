"""The ports: what a flow may use of the outside world, as types.

A flow takes one ``Services`` and reaches storage, Outlook, identity, the CRM and the clock only
through it. ``shared.services.AppServices`` is the real one, built once per process in the
composition root; tests pass fakes that satisfy the same protocols. These are types, not code:
nothing here does I/O, and this module imports only the standard library and ``shared.rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from shared.rules.settings import Settings


@dataclass(frozen=True)
class GraphResponse:
    """One answer from Microsoft Graph (an inner ``$batch`` answer too): already mapped into the
    error tree at the edge, so a flow sees only successes here."""

    status: int
    headers: dict[str, str]
    body: Any = field(default=None)


class Storage(Protocol):
    """Azure Table and Queue Storage of one account (shared/store/storage.py)."""

    def table(self, name: str) -> Any:
        """A table client (``azure.data.tables.TableClient`` or a fake with its methods)."""
        ...

    def send(self, queue_name: str, body: str | bytes, *, delay_seconds: int = 0) -> None: ...

    def check(self) -> dict[str, str]: ...


class Graph(Protocol):
    """Microsoft Graph v1.0 over HTTPS (shared/outlook/graph.py)."""

    def call(
        self,
        token: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> GraphResponse: ...

    def batch(self, token: str, requests_: list[dict[str, Any]]) -> dict[str, GraphResponse]: ...


@runtime_checkable
class MailboxGraph(Protocol):
    """Graph for one user's mailbox (shared/outlook/mailbox_client.py): paths relative to the
    mailbox (``me/events``), the token, the throttle gate and the in-flight limit handled inside.
    ``calendar_id``: the calendar the user's events live in (``None``: the default one); paths to it
    are built by ``shared.rules.calendars``."""

    @property
    def calendar_id(self) -> str | None: ...

    @property
    def mailbox_path(self) -> str:
        """``me``, or ``users/{id}`` for a user synced with the app's own permissions (issue 19)."""
        ...

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        prefer: str | None = None,
        if_match: str | None = None,
    ) -> GraphResponse: ...


class Identity(Protocol):
    """Microsoft identity (shared/outlook/identity.py): for delegated users the sign-in flow and each
    user's access tokens from an encrypted token cache; for organisations (issue 19) the admin-consent
    URL and the app's own tokens per Microsoft tenant (client credentials)."""

    def begin(self, login_hint: str | None) -> dict[str, Any]: ...

    def redeem(self, flow: dict[str, Any], auth_response: dict[str, str]) -> tuple[dict[str, Any], str]: ...

    def access_token(self, tenant: str, user: str, *, force_refresh: bool = False) -> str: ...

    def save_cache(self, tenant: str, user: str, serialized: str, *, etag: str | None = None) -> None: ...

    def forget(self, tenant: str, user: str) -> None: ...

    def refreshed_at(self, tenant: str, user: str) -> datetime | None: ...

    def app_token(self, microsoft_tenant: str, *, force_refresh: bool = False) -> str:
        """An app-only Graph token for the Microsoft tenant (GUID): OrganizationConsentRequired when
        the tenant's admin has not consented or revoked it."""
        ...

    def admin_consent_url(self, state: str) -> str:
        """The v2 ``adminconsent`` URL for ``organizations`` with our redirect and ``state``."""
        ...


class HttpAnswer(Protocol):
    @property
    def status_code(self) -> int: ...


class CrmHttp(Protocol):
    """A pooled HTTP session for the signed callbacks to the CRM (``requests.Session``)."""

    def post(
        self, url: str, *, data: bytes, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> HttpAnswer: ...


class Services(Protocol):
    """Everything a flow may use. Read-only: a flow never swaps an adapter."""

    @property
    def settings(self) -> Settings: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def identity(self) -> Identity: ...

    @property
    def graph(self) -> Graph: ...

    @property
    def http(self) -> CrmHttp: ...

    def now(self) -> datetime:
        """The clock (UTC); tests pass a fixed one."""
        ...
