"""Organisation mode (issue 19): a Microsoft 365 admin consents once, and the CRM then enables its
users by mailbox address, with no sign-in of theirs; the service reaches those mailboxes with the
app's own (application-permission) tokens, as ``users/{object id}/...``.

- **Connect**: ``begin`` stores a single-use, 10-minute state (the row's fields bound to its
  ciphertext, as for a user's sign-in) and answers the v2 ``adminconsent`` URL. ``complete`` (the
  admin's browser at ``/api/auth/admin-callback``) consumes the state, and on ``admin_consent=True``
  does not trust the ``tenant`` value it carries (the identity platform warns it can be forged): it
  proves the consent by acquiring an app-only token for that tenant, then binds the Microsoft tenant
  to this CRM tenant for good (shared/store/organizations.py: another CRM tenant can never take it).
  ``organization.connected`` or ``organization.connect_failed {reason}``; nothing is stored on failure.
- **Enable**: the HTTP call validates and queues ``user-enable`` (no Graph call); the worker reads
  the mailbox (``users/{address}``) and its time zone, subscribes to ``users/{id}/events`` and marks
  the user connected in ``organization`` mode (``connection.connected`` with ``mode``). A user already
  connected with the same mailbox by sign-in keeps its links (one event per activity). Outside the
  admin's scope (403) → ``access_denied``; no such mailbox (404) → ``mailbox_not_found``; each with
  one ``connection.reauth_required {reason, mode}``. A user connected by their own sign-in stays
  connected that way, and gets one ``connection.enable_failed {reason}`` instead.
- **Consent lost** (token requests refused: consent revoked, enterprise app deleted): every app-only
  user of the CRM tenant → ``organization_consent_required`` (one callback each), nothing deleted; a
  new organisation connect queues each of them to be enabled again.
- **Disconnect**: every app-only user of the tenant is stopped through the queue (one message per
  user, read page by page from the tenant's partition), as "Remove sync" would.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shared.flows import callbacks
from shared.flows.connect import (
    REMOVE_CHOICES,
    CallbackOutcome,
    origin_of,
    subscribe,
    with_query,
)
from shared.ports import Services
from shared.rules import queues
from shared.rules.calendars import ORGANIZATION
from shared.rules.callback_messages import (
    CONNECTED,
    ENABLE_FAILED,
    ORGANIZATION_CONNECT_FAILED,
    ORGANIZATION_CONNECTED,
    REAUTH_REQUIRED,
)
from shared.rules.contract import ValidationError
from shared.rules.errors import ConflictError, OrganizationConsentRequired, PermanentError, SyncError
from shared.rules.event_time import is_iana_zone
from shared.rules.messages import normalize_locale
from shared.store import connections, organizations, tables, work_queues
from shared.store.connections import Connection, iso
from shared.store.token_crypto import UndecryptableError, decrypt, encrypt

log = logging.getLogger(__name__)
FLOW_LIFETIME = timedelta(minutes=10)
ADMIN_ROW = "admin-consent"  # OAuthFlows row key of an organisation connect (a user's sign-in uses "")
# Connection states of app-only users that are not "connected" (shared/store/connections.py has the rest).
ACCESS_DENIED = "access_denied"
MAILBOX_NOT_FOUND = "mailbox_not_found"
CONSENT_REQUIRED = OrganizationConsentRequired.CODE
STOPPED_STATES = (ACCESS_DENIED, MAILBOX_NOT_FOUND, CONSENT_REQUIRED)
ENABLE, STOP = "enable", "stop"


class OrganizationNotConnected(Exception):
    """The CRM tenant has no organisation connected (a 409 at the edge)."""


@dataclass(frozen=True)
class OrganizationConnectRequest:
    return_url: str | None
    locale: str


@dataclass(frozen=True)
class EnableRequest:
    mailbox: str
    time_zone: str
    locale: str


# --- connect -------------------------------------------------------------------------------------------


def parse_connect_request(body: object, allowed_origins: frozenset[str]) -> OrganizationConnectRequest:
    if not isinstance(body, dict):
        raise ValidationError([("body", "must be a JSON object")])
    errors: list[tuple[str, str]] = []
    return_url = body.get("return_url")
    if return_url is not None:
        if not isinstance(return_url, str) or origin_of(return_url) is None:
            errors.append(("return_url", "must be an absolute http(s) URL"))
        elif origin_of(return_url) not in allowed_origins:
            errors.append(("return_url", "is not on an origin listed in CRM_RETURN_ORIGINS"))
    locale = body.get("locale", "es")
    if not isinstance(locale, str) or len(locale) > 35:
        errors.append(("locale", "must be a language tag such as es or en-US"))
    if errors:
        raise ValidationError(errors)
    return OrganizationConnectRequest(return_url, normalize_locale(str(locale)))


def begin(services: Services, tenant: str, request: OrganizationConnectRequest, now: datetime) -> dict[str, str]:
    """The admin-consent URL to send the admin's browser to; its state is single use, for 10 minutes."""
    state = secrets.token_urlsafe(32)
    expires_at = (now + FLOW_LIFETIME).replace(microsecond=0)
    entity: dict[str, Any] = {
        "PartitionKey": tables.key(state),
        "RowKey": ADMIN_ROW,
        "tenant": tenant,
        "return_url": request.return_url or "",
        "locale": request.locale,
        "expires_at": expires_at,
    }
    entity["seal"] = encrypt(b"admin-consent", services.settings.token_encryption_keys, _aad(state, entity))
    with tables.storage_errors("storing the organisation connect"):
        services.storage.table(tables.OAUTH_FLOWS).create_entity(entity)
    return {"consent_url": services.identity.admin_consent_url(state), "expires_at": iso(expires_at)}


def complete(services: Services, params: dict[str, str], accept_language: str | None, now: datetime) -> CallbackOutcome:
    """The admin's browser back from the consent page: never raises; every outcome is a redirect to the
    CRM (``organization_sync=connected|error&reason=...``) or, without a return URL, a small page."""
    pending = _take(services, params.get("state", ""))
    if pending is None:
        return CallbackOutcome(None, "error_expired", normalize_locale(accept_language), status=400)
    tenant, locale, return_url = pending["tenant"], pending["locale"], pending["return_url"] or None

    def fail(reason: str, key: str) -> CallbackOutcome:
        log.info("An organisation connect ended with %s", reason)
        callbacks.enqueue(services.storage, ORGANIZATION_CONNECT_FAILED, tenant, None, {"reason": reason})
        if return_url:
            return CallbackOutcome(with_query(return_url, organization_sync="error", reason=reason), key, locale)
        return CallbackOutcome(None, key, locale, status=400)

    if tables.aware(pending["expires_at"]) < now:
        return fail("expired", "error_expired")
    if params.get("error"):
        denied = params["error"] in ("access_denied", "consent_required", "permission_denied")
        return fail("access_denied" if denied else "consent_failed", "error_access_denied" if denied else "error_sign_in_failed")
    microsoft_tenant = params.get("tenant", "").lower()
    if params.get("admin_consent", "").lower() != "true" or not microsoft_tenant:
        return fail("consent_failed", "error_sign_in_failed")
    try:
        # The proof: the tenant's directory issues the app a token only if it has consented.
        services.identity.app_token(microsoft_tenant, force_refresh=True)
    except (OrganizationConsentRequired, PermanentError):
        return fail("consent_not_granted", "error_consent_not_granted")
    except SyncError as error:
        log.warning("An organisation connect could not be verified: %s", error.message)
        return fail("temporarily_unavailable", "error_sign_in_failed")
    try:
        if not organizations.claim_microsoft_tenant(services.storage, microsoft_tenant, tenant, iso(now)):
            log.warning("An admin consent named a Microsoft tenant attached to another CRM tenant; refused")
            return fail("tenant_in_use", "error_tenant_in_use")
        _attach(services, tenant, microsoft_tenant, now)
    except SyncError as error:
        log.warning("An organisation connect could not be stored: %s", error.message)
        return fail("temporarily_unavailable", "error_sign_in_failed")
    if return_url:
        return CallbackOutcome(with_query(return_url, organization_sync="connected"), "organization_connected", locale)
    return CallbackOutcome(None, "organization_connected", locale, status=200)


def _attach(services: Services, tenant: str, microsoft_tenant: str, now: datetime) -> None:
    current = organizations.get(services.storage, tenant)
    organizations.save(
        services.storage,
        replace(current, microsoft_tenant_id=microsoft_tenant, state=organizations.CONNECTED, connected_at=iso(now), changed_at=iso(now)),
    )
    resumed = 0
    for connection in _app_only_users(services, tenant):
        if connection.state == CONSENT_REQUIRED:  # waiting for this consent: enable them again
            _queue(services, ENABLE, tenant, connection.user, {"mailbox": connection.account_oid})
            resumed += 1
    callbacks.enqueue(
        services.storage,
        ORGANIZATION_CONNECTED,
        tenant,
        None,
        {"microsoft_tenant_id": microsoft_tenant, "users_resumed": resumed},
    )


def _take(services: Services, state: str) -> dict[str, Any] | None:
    """Read and delete the stored state in one guarded step: a second use finds nothing; a row changed
    in storage does not unseal."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceNotFoundError

    if not state or len(state) > 256:
        return None
    table = services.storage.table(tables.OAUTH_FLOWS)
    try:
        with tables.storage_errors("reading the organisation connect"):
            row = table.get_entity(tables.key(state), ADMIN_ROW)
            table.delete_entity(row, etag=tables.etag_of(row), match_condition=MatchConditions.IfNotModified)
        decrypt(row["seal"], services.settings.token_encryption_keys, _aad(state, row))
    except (ResourceNotFoundError, ConflictError, UndecryptableError, KeyError, TypeError, AttributeError):
        log.info("An admin consent came back for an unknown, used or altered state")
        return None
    return dict(row)


def _aad(state: str, row: Any) -> str:
    expires_at = int(tables.aware(row["expires_at"]).timestamp())
    return json.dumps(["admin-consent", state, row["tenant"], row["return_url"], row["locale"], expires_at])


def status(services: Services, tenant: str) -> dict[str, Any]:
    organization = organizations.get(services.storage, tenant)
    return {
        "tenant_id": tenant,
        "state": organization.state if organization.microsoft_tenant_id else "never_connected",
        "microsoft_tenant_id": organization.microsoft_tenant_id,
        "connected_at": organization.connected_at,
    }


# --- enable ----------------------------------------------------------------------------------------------


def parse_enable_request(body: object) -> EnableRequest:
    if not isinstance(body, dict):
        raise ValidationError([("body", "must be a JSON object")])
    errors: list[tuple[str, str]] = []
    mailbox = body.get("mailbox")
    if not isinstance(mailbox, str) or not 0 < len(mailbox.strip()) <= 320 or any(c in mailbox for c in "/?#%\\"):
        errors.append(("mailbox", "must be the user's email address (UPN) or Microsoft object id"))
    time_zone = body.get("time_zone")
    if not is_iana_zone(time_zone):
        errors.append(("time_zone", "must be an IANA time zone such as America/Bogota"))
    locale = body.get("locale", "es")
    if not isinstance(locale, str) or len(locale) > 35:
        errors.append(("locale", "must be a language tag such as es or en-US"))
    if errors:
        raise ValidationError(errors)
    assert isinstance(mailbox, str)
    return EnableRequest(mailbox.strip(), str(time_zone), normalize_locale(str(locale)))


def enable(services: Services, tenant: str, user: str, request: EnableRequest) -> dict[str, Any]:
    """Queue the user's enabling (no Graph call here); OrganizationNotConnected without a consent."""
    organization = organizations.get(services.storage, tenant)
    if organization.state != organizations.CONNECTED or not organization.microsoft_tenant_id:
        raise OrganizationNotConnected()
    _queue(
        services,
        ENABLE,
        tenant,
        user,
        {"mailbox": request.mailbox, "time_zone": request.time_zone, "locale": request.locale},
    )
    return {"tenant_id": tenant, "user_id": user, "state": "enabling", "mode": ORGANIZATION}


def _queue(services: Services, action: str, tenant: str, user: str, extra: dict[str, Any]) -> None:
    message = {"action": action, "tenant": tenant, "user": user, **extra}
    with tables.storage_errors("queueing a user of the organisation"):
        work_queues.send(services.storage, queues.USER_ENABLE, tenant, json.dumps(message))


def process(services: Services, raw: bytes, now: datetime) -> str:
    """One ``user-enable`` message. Raises what the queue should retry (transient, throttled)."""
    message = json.loads(raw)
    tenant, user = str(message["tenant"]), str(message["user"])
    if message.get("action") == STOP:
        from shared.flows.connect import disconnect

        current = connections.get(services.storage, tenant, user)
        if current.mode != ORGANIZATION:
            return "skipped"  # the user signed in themselves meanwhile: not the organisation's to stop
        disconnect(services, tenant, user, str(message.get("remove_events") or "none"), now)
        return "stopped"
    return _enable_now(services, tenant, user, message, now)


def _enable_now(services: Services, tenant: str, user: str, message: dict[str, Any], now: datetime) -> str:
    from shared.outlook.graph import NotFoundError

    organization = organizations.get(services.storage, tenant)
    current = connections.get(services.storage, tenant, user)
    if organization.state != organizations.CONNECTED or not organization.microsoft_tenant_id:
        _stop_user(services, current, CONSENT_REQUIRED, "the organisation is not connected", now)
        return CONSENT_REQUIRED
    microsoft_tenant = organization.microsoft_tenant_id
    mailbox = str(message.get("mailbox") or "")
    try:
        token = services.identity.app_token(microsoft_tenant)
    except OrganizationConsentRequired as error:
        consent_lost(services, tenant, error.message)
        _stop_user(services, current, CONSENT_REQUIRED, error.message, now)
        return CONSENT_REQUIRED
    try:
        me = services.graph.call(
            token, "GET", f"users/{mailbox}", params={"$select": "id,userPrincipalName,mail,displayName"}
        ).body or {}
        oid = str(me["id"])
        settings = services.graph.call(
            token, "GET", f"users/{oid}/mailboxSettings", params={"$select": "timeZone"}
        ).body or {}
    except NotFoundError:
        _stop_user(services, current, MAILBOX_NOT_FOUND, "no such mailbox in the organisation", now)
        return MAILBOX_NOT_FOUND
    except PermanentError as error:
        if error.status != 403:
            raise
        _stop_user(services, current, ACCESS_DENIED, "the mailbox is outside what the admin allowed the app", now)
        return ACCESS_DENIED
    if current.account_oid and current.account_oid != oid:
        from shared.flows.connect import _drop_links

        _drop_links(services, tenant, user)  # they point into another mailbox
    if current.mode != ORGANIZATION and current.state in (connections.CONNECTED, connections.REAUTH_REQUIRED):
        _leave_delegated(services, current)  # the same user moves to app-only: links stay
    connection = replace(
        current,
        state=connections.CONNECTED,
        mode=ORGANIZATION,
        locale=str(message.get("locale") or current.locale),
        crm_time_zone=str(message.get("time_zone") or current.crm_time_zone or "UTC"),
        mailbox_time_zone=settings.get("timeZone"),
        account_oid=oid,
        account_tid=microsoft_tenant,
        account_username=me.get("userPrincipalName"),
        account_mail=me.get("mail") or None,
        connected_at=iso(now),
        disconnected_at=None,
        subscription_id=None if current.mode != ORGANIZATION else current.subscription_id,
    )
    connection = subscribe(services, token, connection, now)
    _save(services, connection)
    if current.state in STOPPED_STATES or current.state == connections.REAUTH_REQUIRED:
        from shared.flows.push import enqueue_replays

        enqueue_replays(services, tenant, user)  # what the CRM pushed while the user was stopped
    callbacks.enqueue(
        services.storage,
        CONNECTED,
        tenant,
        user,
        {"account": connection.account_username, "mailbox_time_zone": connection.mailbox_time_zone, "mode": ORGANIZATION},
    )
    return "enabled"


def _leave_delegated(services: Services, current: Connection) -> None:
    """A signed-in user now synced by the organisation: drop their own subscription and tokens."""
    from shared.flows.connect import remove_subscription
    from shared.rules.errors import AuthError

    try:
        token: str | None = services.identity.access_token(current.tenant, current.user)
    except (AuthError, UndecryptableError, SyncError):
        token = None
    if current.subscription_id:
        remove_subscription(services, token, current.subscription_id)
    services.identity.forget(current.tenant, current.user)


def _save(services: Services, connection: Connection) -> None:
    try:
        connections.save(services.storage, connection)
    except ConflictError:
        connections.update(
            services.storage, connection.tenant, connection.user, lambda latest: replace(connection, etag=latest.etag)
        )


def _stop_user(services: Services, current: Connection, state: str, message: str, now: datetime) -> bool:
    """Move one app-only user (or one being enabled) to ``state``, with one callback; True if it moved.
    A user connected by their own sign-in stays so: the enable failed, and the CRM is told that."""
    moved = signed_in = False

    def change(latest: Connection) -> Connection:
        nonlocal moved, signed_in
        signed_in = latest.mode != ORGANIZATION and latest.state == connections.CONNECTED
        moved = latest.state != state and not signed_in
        if signed_in:
            return latest.with_error("permanent", f"enabling by the organisation failed: {message}", now)
        if not moved:
            return latest
        return replace(latest, state=state, mode=ORGANIZATION).with_error("auth", message, now)

    connections.update(services.storage, current.tenant, current.user, change)
    if signed_in:
        log.warning("Enabling a signed-in user by the organisation failed (%s); they stay signed in", state)
        callbacks.enqueue(
            services.storage, ENABLE_FAILED, current.tenant, current.user, {"reason": state, "at": iso(now)}
        )
    if moved:
        log.warning("An app-only user is now %s", state)
        callbacks.enqueue(
            services.storage,
            REAUTH_REQUIRED,
            current.tenant,
            current.user,
            {"reason": state, "mode": ORGANIZATION, "at": iso(now)},
        )
    return moved


def consent_lost(services: Services, tenant: str, reason: str, now: datetime | None = None) -> int:
    """The organisation's consent is gone: the organisation and each of its connected app-only users
    wait for a new organisation connect (one callback per user). Nothing is deleted. Returns how many
    users moved."""
    from datetime import UTC

    now = now or datetime.now(UTC)
    organization = organizations.get(services.storage, tenant)
    if organization.state == organizations.CONNECTED:
        try:
            organizations.save(services.storage, replace(organization, state=organizations.CONSENT_REQUIRED, changed_at=iso(now)))
        except ConflictError:
            pass  # another worker noticed first
    moved = 0
    for connection in _app_only_users(services, tenant):
        if connection.state == connections.CONNECTED:
            moved += _stop_user(services, connection, CONSENT_REQUIRED, f"the organisation's consent is gone: {reason}", now)
    return moved


def _app_only_users(services: Services, tenant: str) -> Iterator[Connection]:
    """The tenant's app-only users, read page by page from its own partition."""
    return connections.in_tenant(services.storage, tenant, mode=ORGANIZATION)


# --- disconnect ----------------------------------------------------------------------------------------


def parse_disconnect_request(body: object) -> str:
    if body is None:
        return "none"
    if not isinstance(body, dict):
        raise ValidationError([("body", "must be a JSON object")])
    choice = body.get("remove_events", "none")
    if choice not in REMOVE_CHOICES:
        raise ValidationError([("remove_events", "must be one of none, future, all")])
    return str(choice)


def disconnect(services: Services, tenant: str, remove_events: str, now: datetime) -> dict[str, Any]:
    """Stop the organisation: no new enabling, and every app-only user stopped through the queue."""
    organization = organizations.get(services.storage, tenant)
    if organization.microsoft_tenant_id and organization.state != organizations.DISCONNECTED:
        organizations.save(services.storage, replace(organization, state=organizations.DISCONNECTED, changed_at=iso(now)))
    stopping = 0
    for connection in _app_only_users(services, tenant):
        if connection.state != connections.DISCONNECTED:
            _queue(services, STOP, tenant, connection.user, {"remove_events": remove_events})
            stopping += 1
    return {"tenant_id": tenant, "state": organizations.DISCONNECTED, "users_stopping": stopping}
