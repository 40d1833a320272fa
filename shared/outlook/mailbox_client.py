"""Graph for one user's mailbox, as the push and reconcile workers use it: a token on first use
(refreshed once if Graph rejects it), the shared throttle gate (``shared.outlook.throttle``) checked before
the first call, at most four requests in flight per mailbox, and a throttle answer closing the gate
for every worker. Event ids are asked for as immutable ids, which survive moves between folders."""

from __future__ import annotations

from types import EllipsisType
from typing import Any

from shared.outlook.throttle import InFlight, MailboxGate, MailboxGated
from shared.ports import GraphResponse, Services
from shared.rules.errors import AuthError, ThrottledError
from shared.store import tables
from shared.store.connections import Connection

PREFER = {"Prefer": 'IdType="ImmutableId"'}


class MailboxClient:
    """Graph calls for one user's mailbox: a token on first use, the shared throttle gate checked
    before the first call (and after any throttle seen here), at most 4 requests in flight, and a
    throttle answer closing the gate for everyone."""

    def __init__(
        self,
        services: Services,
        tenant: str,
        user: str,
        calendar_id: str | None | EllipsisType = ...,
        *,
        connection: Connection | None = None,
    ) -> None:
        self.services = services
        self._connection = connection
        self.tenant, self.user = tenant, user
        self.gate = MailboxGate(services.storage, tenant, user)
        self.mailbox = tables.key(tenant, user)
        self._token: str | None = None
        self._checked = False
        self.wrote = False
        self._calendar_id = calendar_id

    @property
    def calendar_id(self) -> str | None:
        """The calendar the user's events live in (``None``: the default one), from the connection
        unless the caller gave it; read once per client."""
        if isinstance(self._calendar_id, EllipsisType):
            self._calendar_id = self.connection.calendar_id
        return self._calendar_id

    @property
    def connection(self) -> Connection:
        """The user's connection as the caller gave it, else read once per client."""
        if self._connection is None:
            from shared.store import connections

            self._connection = connections.get(self.services.storage, self.tenant, self.user)
        return self._connection

    @property
    def mailbox_path(self) -> str:
        """The mailbox's path segment (``me``, or ``users/{id}`` for an app-only user)."""
        return self.connection.mailbox_path

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        prefer: str | None = None,
        if_match: str | None = None,
    ) -> GraphResponse:
        """``prefer``: more Graph preferences (e.g. ``odata.maxpagesize=100``), sent with ours.
        ``if_match``: a changeKey; the write happens only if the item still has it (else Graph
        answers 412 ``ErrorIrresolvableConflict``, a PermanentError with status 412)."""
        if not self._checked:
            self.gate.check()
            self._checked = True
        else:
            self.gate.check_local()
        if self._token is None:
            self._token = mailbox_token(self.services, self.connection)
        try:
            answer = self._send(method, path, json, params, prefer, if_match)
        except AuthError:
            # The access token may have been revoked early: one refresh, then the verdict stands.
            self._token = mailbox_token(self.services, self.connection, force_refresh=True)
            answer = self._send(method, path, json, params, prefer, if_match)
        if method != "GET":
            self.wrote = True
        return answer

    def _send(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, str] | None,
        prefer: str | None,
        if_match: str | None = None,
    ) -> Any:
        headers = {"Prefer": f"{PREFER['Prefer']}, {prefer}"} if prefer else dict(PREFER)
        if if_match:
            headers["If-Match"] = f'W/"{if_match}"'  # the event's @odata.etag form
        with InFlight.slot(self.mailbox):
            try:
                return self.services.graph.call(
                    self._token, method, path, json=json, params=params, headers=headers
                )
            except MailboxGated:
                raise
            except ThrottledError as throttled:
                self.gate.close(throttled.retry_after)
                raise


def mailbox_token(services: Services, connection: Connection, *, force_refresh: bool = False) -> str:
    """A Graph token for the connection's mailbox: the user's own (delegated, from their token cache)
    or the app's for the user's Microsoft tenant (organisation mode, issue 19)."""
    from shared.rules.calendars import ORGANIZATION

    if connection.mode == ORGANIZATION:
        if not connection.account_tid:
            raise AuthError("no Microsoft tenant recorded for this app-only user", code="no_tenant")
        return services.identity.app_token(connection.account_tid, force_refresh=force_refresh)
    return services.identity.access_token(connection.tenant, connection.user, force_refresh=force_refresh)
