"""Connect ("Sign in with Outlook"), the OAuth callback, disconnect ("Remove sync") and status.

Connect stores the MSAL auth-code flow by its ``state`` (encrypted: it holds the PKCE verifier),
single use, for 10 minutes; the row's tenant, user, return URL, locale, time zone and expiry are
bound to the ciphertext as associated data, so a row changed in storage does not decrypt and the
sign-in is refused. The callback consumes it (an ETag-guarded delete: a replay finds
nothing), redeems the code, stores the token cache encrypted, reads the account and the mailbox
time zone, subscribes to the user's events, and marks the connection ``connected``. If anything
fails after the token cache was stored, the cache is wiped again (unless the user was already
connected, whose cache it replaced with an equally good one): no tokens stay behind for a user
who reads as not connected. "Remove sync" wipes any token row, whatever the connection's state.

A different Microsoft account for the same CRM user: refused while a connection exists
(``connected`` or ``reauth_required``: the user must "Remove sync" first), so events never end up
split across two mailboxes. After a disconnect, another account may connect; the links to the old
mailbox's events are dropped then, since they point into a mailbox we no longer reach.

Reconnecting from ``reauth_required`` replays every activity the CRM pushed meanwhile (push keeps
the latest payload of each), so nothing is lost; unchanged ones cost no Graph write. After
"Remove sync", older activities come back through "Sync" (backfill), as the CRM's help centre says.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.flows import calendars, callbacks
from shared.flows.calendars import CalendarUnavailable
from shared.outlook.mailbox_client import mailbox_token
from shared.ports import Services
from shared.rules.calendars import (
    CHOSEN,
    DEDICATED,
    DEFAULT,
    DELEGATED,
    CalendarChoice,
    graph_path,
    parse_choice,
)
from shared.rules.contract import ValidationError
from shared.rules.errors import AuthError, ConflictError, SyncError
from shared.rules.event_time import is_iana_zone
from shared.rules.messages import normalize_locale, text
from shared.store import connections, tables
from shared.store.connections import CONNECTED, DISCONNECTED, REAUTH_REQUIRED, Connection, iso
from shared.store.token_crypto import UndecryptableError, decrypt, encrypt

log = logging.getLogger(__name__)
FLOW_LIFETIME = timedelta(minutes=10)
TICKET_LIFETIME = timedelta(minutes=2)  # the CRM sends the browser to the start URL at once
COOKIE_PREFIX = "__Host-cos-sign-in-"  # + a digest of the state: parallel sign-ins do not collide
SUBSCRIPTION_MINUTES = 10080 - 15  # Outlook events allow 10,080; a margin for clock skew
SUBSCRIBED_CHANGES = "created,updated,deleted"


@dataclass(frozen=True)
class ConnectRequest:
    return_url: str | None
    time_zone: str
    locale: str
    login_hint: str | None = None
    capture: bool = True  # issue 17: false = this user's Outlook meetings are never reported
    calendar: CalendarChoice = CalendarChoice()


@dataclass(frozen=True)
class CallbackOutcome:
    """Where the browser goes after sign-in: a redirect to the CRM, or a page of ours."""

    redirect_url: str | None
    page_key: str  # messages key for the page (or for logs when redirecting)
    locale: str
    status: int = 302
    # Set when the user must confirm an account other than the CRM's login_hint (page "confirm_account").
    confirmation: dict[str, str] | None = None
    clear_cookie: str | None = None  # the flow's cookie, once the flow is over


@dataclass(frozen=True)
class StartOutcome:
    """The start URL's answer: a redirect to Microsoft with the flow's cookie, or a page of ours."""

    redirect_url: str | None
    page_key: str
    locale: str
    status: int = 302
    cookie_name: str | None = None
    cookie_value: str | None = None
    cookie_max_age: int = 0


class RemovalRunning(Exception):
    """Connect refused: the events of the previous connection are still being removed."""


def cookie_name(state: str) -> str:
    return COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _ticket_key(ticket: str) -> str:
    return tables.key("ticket-" + _digest(ticket))


def _confirmation_key(confirmation: str) -> str:
    return tables.key("confirm-" + _digest(confirmation))


def parse_connect_request(body: object, allowed_origins: frozenset[str]) -> ConnectRequest:
    """Validate the CRM's connect body; ValidationError names every bad field."""
    errors: list[tuple[str, str]] = []
    if not isinstance(body, dict):
        raise ValidationError([("body", "must be a JSON object")])
    return_url = body.get("return_url")
    if return_url is not None:
        if not isinstance(return_url, str) or origin_of(return_url) is None:
            errors.append(("return_url", "must be an absolute http(s) URL"))
        elif origin_of(return_url) not in allowed_origins:
            errors.append(("return_url", "is not on an origin listed in CRM_RETURN_ORIGINS"))
    time_zone = body.get("time_zone")
    if not is_iana_zone(time_zone):
        errors.append(("time_zone", "must be an IANA time zone such as America/Bogota"))
    locale = body.get("locale", "es")
    if not isinstance(locale, str) or len(locale) > 35:
        errors.append(("locale", "must be a language tag such as es or en-US"))
    login_hint = body.get("login_hint")
    if login_hint is not None and (not isinstance(login_hint, str) or len(login_hint) > 320):
        errors.append(("login_hint", "must be an email address or user name"))
    capture = body.get("capture", True)
    if not isinstance(capture, bool):
        errors.append(("capture", "must be true or false"))
    calendar = parse_choice(body.get("calendar"))
    if calendar is None:
        errors.append(("calendar", 'must be "default", "dedicated" or {"id": "<calendar id>"}'))
    if errors:
        raise ValidationError(errors)
    assert calendar is not None
    return ConnectRequest(
        return_url, str(time_zone), normalize_locale(str(locale)), login_hint or None, capture is not False, calendar
    )


def origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def begin_connect(
    services: Services, tenant: str, user: str, request: ConnectRequest, now: datetime
) -> dict[str, str]:
    """Start sign-in: the start URL of this service to send the browser to at once (its ticket is
    single use and lives ``TICKET_LIFETIME``); the sign-in itself then has 10 minutes."""
    from shared.store import removals

    if removals.running(services.storage, tenant, user):
        raise RemovalRunning
    flow = services.identity.begin(request.login_hint)
    expires_at = (now + FLOW_LIFETIME).replace(microsecond=0)
    keys = services.settings.token_encryption_keys
    entity = {
        "PartitionKey": tables.key(flow["state"]),
        "RowKey": "",
        "tenant": tenant,
        "user": user,
        "return_url": request.return_url or "",
        "locale": request.locale,
        "time_zone": request.time_zone,
        "login_hint": request.login_hint or "",
        "expires_at": expires_at,
        "capture": request.capture,
        "calendar": json.dumps([request.calendar.kind, request.calendar.calendar_id]),
    }
    entity["flow"] = encrypt(json.dumps(flow).encode(), keys, _flow_aad(flow["state"], entity))
    ticket = secrets.token_urlsafe(32)
    ticket_expires = (now + TICKET_LIFETIME).replace(microsecond=0)
    ticket_row = {
        "PartitionKey": _ticket_key(ticket),
        "RowKey": "",
        "state": flow["state"],
        "expires_at": ticket_expires,
    }
    table = services.storage.table(tables.OAUTH_FLOWS)
    with tables.storage_errors("storing the sign-in flow"):
        table.create_entity(entity)
        table.create_entity(ticket_row)
    start_url = f"{services.settings.public_base_url}/api/auth/start?" + urlencode({"ticket": ticket})
    return {"start_url": start_url, "expires_at": iso(ticket_expires)}


def start_sign_in(services: Services, ticket: str, accept_language: str | None, now: datetime) -> StartOutcome:
    """The start URL: consume the ticket, bind the flow to this browser, send it to Microsoft."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceNotFoundError

    expired = StartOutcome(None, "error_expired", normalize_locale(accept_language), status=400)
    if not ticket or len(ticket) > 256:
        return expired
    table = services.storage.table(tables.OAUTH_FLOWS)
    try:
        with tables.storage_errors("reading the sign-in ticket"):
            ticket_row = table.get_entity(_ticket_key(ticket), "")
            table.delete_entity(
                ticket_row, etag=tables.etag_of(ticket_row), match_condition=MatchConditions.IfNotModified
            )
            state = ticket_row["state"]
            row = table.get_entity(tables.key(state), "")
    except (ResourceNotFoundError, ConflictError, KeyError):
        log.info("A sign-in start URL was opened again, or after its flow was gone")
        return expired
    locale = row.get("locale") or normalize_locale(accept_language)
    if tables.aware(ticket_row["expires_at"]) < now or tables.aware(row["expires_at"]) < now:
        return replace(expired, locale=locale)
    if row.get("browser"):  # bound already: a second ticket of one flow does not exist; refuse
        return replace(expired, locale=locale)
    try:
        flow = json.loads(decrypt(row["flow"], services.settings.token_encryption_keys, _flow_aad(state, row)))
    except (UndecryptableError, KeyError, TypeError, ValueError):
        return replace(expired, locale=locale)
    secret = secrets.token_urlsafe(32)
    try:
        with tables.storage_errors("binding the sign-in to the browser"):
            tables.write(table, {**row, "browser": _digest(secret)}, tables.etag_of(row), "binding the sign-in")
    except ConflictError:
        return replace(expired, locale=locale)
    max_age = int((tables.aware(row["expires_at"]) - now).total_seconds())
    return StartOutcome(
        flow["auth_uri"], "redirect", locale, 302, cookie_name(state), secret, max(1, max_age)
    )


def _same_browser(row: Any, cookies: dict[str, str], name: str) -> bool:
    bound, presented = row.get("browser"), cookies.get(name)
    return bool(bound and presented) and hmac.compare_digest(str(bound), _digest(presented or ""))


def complete_connect(
    services: Services,
    params: dict[str, str],
    accept_language: str | None,
    now: datetime,
    cookies: dict[str, str] | None = None,
) -> CallbackOutcome:
    """The OAuth callback: never raises; every failure becomes an error redirect or page. A
    browser without the flow's cookie gets a page and changes nothing (the flow stays)."""
    state = params.get("state", "")
    pending = _take_flow(services, state, cookies or {})
    if pending is None:
        return CallbackOutcome(None, "error_expired", normalize_locale(accept_language), status=400)
    if pending.get("other_browser"):
        log.info("A sign-in came back in a browser that did not start it; refused")
        return CallbackOutcome(None, "error_other_browser", pending["locale"], status=403)
    locale, return_url = pending["locale"], pending["return_url"] or None
    done = cookie_name(state)

    fail = _failing_back("Sign-in", return_url, locale, done)

    if pending["expires_at"] < now:
        return fail("expired", "error_expired")
    if params.get("error"):
        denied = params["error"] in ("access_denied", "consent_required")
        return fail(
            "access_denied" if denied else "sign_in_failed",
            "error_access_denied" if denied else "error_sign_in_failed",
        )
    tenant, user = pending["tenant"], pending["user"]
    try:
        claims, cache = services.identity.redeem(pending["flow"], params)
        hint = pending.get("login_hint") or ""
        if hint and not _is_account(claims, hint):
            return _ask_confirmation(services, pending, claims, cache, done, now)
        outcome = _connect(services, tenant, user, pending, claims, cache, now)
    except CalendarUnavailable as unavailable:
        return fail(unavailable.reason, f"error_{unavailable.reason}")
    except AuthError:
        return fail("sign_in_failed", "error_sign_in_failed")
    except SyncError as error:
        log.warning("Sign-in could not be completed: %s", error.message)
        return fail("temporarily_unavailable", "error_sign_in_failed")
    return _connected_or_failed(outcome, return_url, locale, done, fail)


def _failing_back(
    step: str, return_url: str | None, locale: str, done: str
) -> Callable[[str, str], CallbackOutcome]:
    """How a sign-in step ends in failure: back to the CRM's return URL with the reason, or else our
    page (``page_key``) in the user's language; the flow's cookie is cleared either way."""

    def fail(reason: str, page_key: str) -> CallbackOutcome:
        log.info("%s for a CRM user ended with %s", step, reason)
        if return_url:
            return CallbackOutcome(
                with_query(return_url, calendar_sync="error", reason=reason), page_key, locale, clear_cookie=done
            )
        return CallbackOutcome(None, page_key, locale, status=400, clear_cookie=done)

    return fail


def _connected_or_failed(outcome: str | None, return_url: str | None, locale: str, done: str, fail: Any) -> CallbackOutcome:
    if outcome is not None:
        return fail(outcome, f"error_{outcome}")  # type: ignore[no-any-return]
    if return_url:
        return CallbackOutcome(
            with_query(return_url, calendar_sync="connected"), "connected_body", locale, clear_cookie=done
        )
    return CallbackOutcome(None, "connected_body", locale, status=200, clear_cookie=done)


def _is_account(claims: dict[str, Any], hint: str) -> bool:
    """Whether the account that signed in is the one the CRM named (its sign-in name or e-mail)."""
    names = {str(claims.get(k) or "").strip().lower() for k in ("preferred_username", "email", "upn")}
    return hint.strip().lower() in names - {""}


def _confirmation_aad(key: str, row: Any) -> str:
    expires_at = int(tables.aware(row["expires_at"]).timestamp())
    fields = [row["tenant"], row["user"], row["return_url"], row["locale"], row["time_zone"], row["cookie"]]
    return json.dumps(["account-confirmation", key, *fields, row["account"], expires_at])


def _ask_confirmation(
    services: Services, pending: dict[str, Any], claims: dict[str, Any], cache: str, cookie: str, now: datetime
) -> CallbackOutcome:
    """Another account than the CRM's login_hint signed in: park the grant (encrypted, single use,
    10 minutes, bound to this browser's cookie) and ask the user to confirm it on our page."""
    confirmation = secrets.token_urlsafe(32)
    account = str(claims.get("preferred_username") or claims.get("email") or claims.get("oid") or "")
    key = _confirmation_key(confirmation)
    row: dict[str, Any] = {
        "PartitionKey": key,
        "RowKey": "",
        "tenant": pending["tenant"],
        "user": pending["user"],
        "return_url": pending["return_url"],
        "locale": pending["locale"],
        "time_zone": pending["time_zone"],
        "cookie": cookie,
        "browser": pending["browser"],
        "account": account,
        "expires_at": (now + FLOW_LIFETIME).replace(microsecond=0),
    }
    kept = {k: claims.get(k) for k in ("oid", "tid", "preferred_username", "email", "upn")}
    grant = json.dumps({"claims": kept, "cache": cache}).encode()
    row["grant"] = encrypt(grant, services.settings.token_encryption_keys, _confirmation_aad(key, row))
    with tables.storage_errors("storing the account confirmation"):
        services.storage.table(tables.OAUTH_FLOWS).create_entity(row)
    log.info("A different account than the CRM's hint signed in; asking the user to confirm it")
    return CallbackOutcome(
        None,
        "confirm_account",
        pending["locale"],
        status=200,
        confirmation={"id": confirmation, "account": account, "expected": pending.get("login_hint") or ""},
    )


def confirm_account(
    services: Services,
    form: dict[str, str],
    cookies: dict[str, str],
    accept_language: str | None,
    now: datetime,
) -> CallbackOutcome:
    """The user's answer on the confirmation page: ``decision=connect`` connects the account that
    signed in, anything else cancels; single use, and only in the browser that signed in."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceNotFoundError

    expired = CallbackOutcome(None, "error_expired", normalize_locale(accept_language), status=400)
    confirmation = form.get("confirmation", "")
    if not confirmation or len(confirmation) > 256:
        return expired
    key = _confirmation_key(confirmation)
    table = services.storage.table(tables.OAUTH_FLOWS)
    try:
        with tables.storage_errors("reading the account confirmation"):
            row = table.get_entity(key, "")
            if not _same_browser(row, cookies, row["cookie"]):
                return CallbackOutcome(None, "error_other_browser", row["locale"], status=403)
            table.delete_entity(row, etag=tables.etag_of(row), match_condition=MatchConditions.IfNotModified)
        grant = json.loads(
            decrypt(row["grant"], services.settings.token_encryption_keys, _confirmation_aad(key, row))
        )
    except (ResourceNotFoundError, ConflictError, UndecryptableError, KeyError, TypeError, ValueError):
        return expired
    locale, return_url, done = row["locale"], row["return_url"] or None, row["cookie"]
    pending = {
        "tenant": row["tenant"],
        "user": row["user"],
        "locale": locale,
        "time_zone": row["time_zone"],
        "return_url": row["return_url"],
    }

    fail = _failing_back("Account confirmation", return_url, locale, done)

    if tables.aware(row["expires_at"]) < now:
        return fail("expired", "error_expired")
    if form.get("decision") != "connect":
        return fail("account_not_confirmed", "error_account_not_confirmed")
    try:
        outcome = _connect(services, row["tenant"], row["user"], pending, grant["claims"], grant["cache"], now)
    except AuthError:
        return fail("sign_in_failed", "error_sign_in_failed")
    except SyncError as error:
        log.warning("Sign-in could not be completed: %s", error.message)
        return fail("temporarily_unavailable", "error_sign_in_failed")
    return _connected_or_failed(outcome, return_url, locale, done, fail)


def _take_flow(services: Services, state: str, cookies: dict[str, str]) -> dict[str, Any] | None:
    """Read and delete the stored flow in one guarded step: the second use of a state finds nothing.
    A browser without the flow's cookie gets ``{"other_browser": True, "locale": ...}`` and the
    flow stays, untouched, for the browser that started it."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceNotFoundError

    if not state or len(state) > 256:
        return None
    table = services.storage.table(tables.OAUTH_FLOWS)
    try:
        with tables.storage_errors("reading the sign-in flow"):
            row = table.get_entity(tables.key(state), "")
            if not _same_browser(row, cookies, cookie_name(state)):
                return {"other_browser": True, "locale": row.get("locale") or "es"}
            table.delete_entity(row, etag=tables.etag_of(row), match_condition=MatchConditions.IfNotModified)
        flow = json.loads(
            decrypt(row["flow"], services.settings.token_encryption_keys, _flow_aad(state, row))
        )
    except (ResourceNotFoundError, ConflictError, UndecryptableError, KeyError, TypeError, AttributeError):
        log.info("A sign-in came back for an unknown, used or altered flow")
        return None
    return {**row, "flow": flow, "expires_at": tables.aware(row["expires_at"])}


def _connect(
    services: Services,
    tenant: str,
    user: str,
    pending: dict[str, Any],
    claims: dict[str, Any],
    cache: str,
    now: datetime,
) -> str | None:
    """Store the grant and subscribe; returns an error reason, or None when connected."""
    from shared.store import removals

    current = connections.get(services.storage, tenant, user)
    oid = claims.get("oid")
    if removals.running(services.storage, tenant, user):
        return "removal_in_progress"
    if current.state in (CONNECTED, REAUTH_REQUIRED) and current.account_oid and current.account_oid != oid:
        return "account_mismatch"
    if current.account_oid and current.account_oid != oid:
        _drop_links(services, tenant, user)  # they point into the previous account's mailbox
    services.identity.save_cache(tenant, user, cache)
    try:
        return _finish_connect(services, current, pending, claims, now)
    except BaseException:
        if current.state != CONNECTED:
            _wipe_tokens(services, tenant, user)
        raise


def _wipe_tokens(services: Services, tenant: str, user: str) -> None:
    try:
        services.identity.forget(tenant, user)
    except SyncError as error:
        log.warning("The token cache could not be wiped: %s", error.message)


def _finish_connect(
    services: Services, current: Connection, pending: dict[str, Any], claims: dict[str, Any], now: datetime
) -> str | None:
    tenant, user, oid = current.tenant, current.user, claims.get("oid")
    token = services.identity.access_token(tenant, user)
    me = services.graph.call(
        token, "GET", "me", params={"$select": "id,userPrincipalName,mail,displayName"}
    ).body
    mailbox = services.graph.call(token, "GET", "me/mailboxSettings", params={"$select": "timeZone"}).body
    connection = replace(
        current,
        state=CONNECTED,
        mode=DELEGATED,  # a user the organisation had enabled now signs in themselves (issue 19)
        locale=pending["locale"],
        crm_time_zone=pending["time_zone"],
        mailbox_time_zone=(mailbox or {}).get("timeZone"),
        account_oid=oid,
        account_tid=claims.get("tid"),
        account_username=claims.get("preferred_username") or (me or {}).get("userPrincipalName"),
        account_mail=(me or {}).get("mail") or None,
        capture=pending.get("capture") is not False,
        connected_at=iso(now),
        disconnected_at=None,
    )
    if current.state not in (CONNECTED, REAUTH_REQUIRED):  # a reconnect keeps its calendar (switch: PUT)
        connection = calendars.resolve(services, token, connection, _pending_choice(pending))
    elif connection.calendar == DEDICATED:
        connection = calendars.resolve(services, token, connection, CalendarChoice(DEDICATED))
    connection = subscribe(services, token, connection, now)
    _save_latest(services, connection)
    if current.state == REAUTH_REQUIRED:
        from shared.flows.push import enqueue_replays

        enqueue_replays(services, tenant, user)  # what the CRM pushed while the grant was broken
    callbacks.enqueue(
        services.storage,
        callbacks.CONNECTED,
        tenant,
        user,
        {
            "account": connection.account_username,
            "mailbox_time_zone": connection.mailbox_time_zone,
        },
    )
    return None


def _pending_choice(pending: dict[str, Any]) -> CalendarChoice:
    try:
        kind, calendar_id = json.loads(pending.get("calendar") or '["default", null]')
    except (ValueError, TypeError):
        return CalendarChoice()
    return CalendarChoice(kind, calendar_id) if kind in (DEFAULT, DEDICATED, CHOSEN) else CalendarChoice()


def _save_latest(services: Services, connection: Connection) -> None:
    """Write our view of the connection over whatever a concurrent worker stored meanwhile."""
    try:
        connections.save(services.storage, connection)
    except ConflictError:
        connections.update(
            services.storage,
            connection.tenant,
            connection.user,
            lambda latest: replace(connection, etag=latest.etag),
        )


def subscribe(services: Services, token: str, connection: Connection, now: datetime) -> Connection:
    """Subscribe to the user's events; on failure stay connected (pushes still work, the timer
    sweep still reconciles) and show why in status. The renewal timer tries again."""
    base = services.settings.public_base_url
    client_state = secrets.token_urlsafe(32)
    from shared.flows.subscriptions import expiry

    expires = expiry(now)  # jittered: users who connect together are not all due together
    body = {
        "changeType": SUBSCRIBED_CHANGES,
        "notificationUrl": f"{base}/api/graph/notifications",
        "lifecycleNotificationUrl": f"{base}/api/graph/lifecycle",
        "resource": graph_path(connection.calendar_id, "events", mailbox=connection.mailbox_path),
        "expirationDateTime": iso(expires),
        "clientState": client_state,
    }
    try:
        created = services.graph.call(token, "POST", "subscriptions", json=body).body or {}
    except SyncError as error:
        log.warning("Subscription could not be created: %s", error.message)
        return connection.with_error(
            "subscription", f"Outlook change notifications are off for now: {error.message}", now
        )
    if connection.subscription_id and connection.subscription_id != created.get("id"):
        remove_subscription(services, token, connection.subscription_id)
    entity = {
        "PartitionKey": tables.key(created["id"]),
        "RowKey": "",
        "tenant": connection.tenant,
        "user": connection.user,
        "client_state": client_state,
        "expires_at": created.get("expirationDateTime", iso(expires)),
    }
    with tables.storage_errors("storing the subscription"):
        services.storage.table(tables.SUBSCRIPTIONS).upsert_entity(entity)
    return replace(
        connection,
        subscription_id=created["id"],
        subscription_expires_at=created.get("expirationDateTime", iso(expires)),
    )


def remove_subscription(services: Services, token: str | None, subscription_id: str) -> None:
    """Delete at Graph (a 404 means it is already gone) and forget it here."""
    from azure.core.exceptions import ResourceNotFoundError

    from shared.outlook.graph import NotFoundError

    if token:
        try:
            services.graph.call(token, "DELETE", f"subscriptions/{subscription_id}")
        except NotFoundError:
            pass
        except SyncError as error:
            log.warning(
                "Subscription could not be deleted at Graph (it expires by itself): %s", error.message
            )
    try:
        with tables.storage_errors("forgetting the subscription"):
            services.storage.table(tables.SUBSCRIPTIONS).delete_entity(tables.key(subscription_id), "")
    except ResourceNotFoundError:
        pass


def _drop_links(services: Services, tenant: str, user: str) -> None:
    table = services.storage.table(tables.LINKS)
    with tables.storage_errors("dropping links to the previous mailbox"):
        for row in table.query_entities("PartitionKey eq @pk", parameters={"pk": tables.key(tenant, user)}):
            table.delete_entity(row["PartitionKey"], row["RowKey"])


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def _flow_aad(state: str, row: Any) -> str:
    """Binds the flow to its row's clear fields: who signs in, where they return, until when."""
    expires_at = int(tables.aware(row["expires_at"]).timestamp())
    fields = [row["tenant"], row["user"], row["return_url"], row["locale"], row["time_zone"], expires_at]
    if row.get("capture") is False:
        fields.append("no-capture")  # the opt-out is bound too (rows with capture on keep the old form)
    if row.get("calendar"):
        fields.append(row["calendar"])  # the calendar chosen at connect is bound too
    hint = row.get("login_hint") or ""
    return json.dumps(["oauth-flow", state, *fields, *([hint] if hint else [])])


# --- disconnect --------------------------------------------------------------------------------------

REMOVE_CHOICES = ("none", "future", "all")


def parse_disconnect_request(body: object) -> str:
    if body is None:
        return "none"
    if not isinstance(body, dict):
        raise ValidationError([("body", "must be a JSON object")])
    choice = body.get("remove_events", "none")
    if choice not in REMOVE_CHOICES:
        raise ValidationError([("remove_events", "must be one of none, future, all")])
    return choice


def disconnect(services: Services, tenant: str, user: str, remove_events: str, now: datetime) -> dict[str, Any]:
    """Remove sync, answered at once: the sync stops (no new pushes, subscription deleted, no CRM
    content kept) and, when events are to go, a removal job starts (shared/flows/removal.py) that
    keeps the grant until it ends, then deletes it and sends ``connection.disconnected``. Without
    events to remove, the tokens go now and the callback is queued now. Idempotent: during a
    removal it answers that removal's progress."""
    from shared.flows import removal
    from shared.store import removals

    current = connections.get(services.storage, tenant, user)
    running = removals.get(services.storage, tenant, user)
    if running is not None and running.state == removals.RUNNING:
        removal.nudge(services, running, now)
        return _disconnect_answer("disconnected_removing", current.locale, running)
    if current.state in (connections.NEVER_CONNECTED, DISCONNECTED):
        services.identity.forget(tenant, user)  # a cache left by an unfinished sign-in goes too
        return {"status": current.state, "message": text("disconnected", current.locale), "removal": None}
    try:
        token = mailbox_token(services, current)
    except (AuthError, UndecryptableError):
        token = None  # the grant is gone: we can still forget everything on our side
    if current.subscription_id:
        remove_subscription(services, token, current.subscription_id)
    dedicated = current.calendar_id if current.calendar == DEDICATED else None
    job = (
        removal.start(services, tenant, user, remove_events, now, calendar_id=dedicated)
        if token and remove_events != "none"
        else None
    )
    if job is None:
        # A removal job does this as its first step instead, so that this answers at once.
        removal.forget_content(services.storage, tenant, user)
    connections.update(
        services.storage,
        tenant,
        user,
        lambda c: replace(
            c,
            state=DISCONNECTED,
            disconnected_at=iso(now),
            subscription_id=None,
            subscription_expires_at=None,
        ),
    )
    if job is not None:
        return _disconnect_answer("disconnected_removing", current.locale, job)
    services.identity.forget(tenant, user)
    callbacks.enqueue(services.storage, callbacks.DISCONNECTED, tenant, user, {"events_removed": 0})
    key = "disconnected" if token or remove_events == "none" else "disconnected_events_kept"
    return {"status": DISCONNECTED, "message": text(key, current.locale), "removal": None}


def _disconnect_answer(key: str, locale: str, job: Any) -> dict[str, Any]:
    from shared.store import removals

    return {"status": DISCONNECTED, "message": text(key, locale), "removal": removals.view(job)}


# --- status ------------------------------------------------------------------------------------------


def status(services: Services, tenant: str, user: str) -> dict[str, Any]:
    from shared.flows import calendar_move
    from shared.store import backfill_jobs, links, mailbox_sync, removals

    current = connections.get(services.storage, tenant, user)
    removal = removals.get(services.storage, tenant, user)
    held = mailbox_sync.held_deletions(services.storage, tenant, user)
    return {
        "tenant_id": tenant,
        "user_id": user,
        "state": current.state,
        "mode": current.mode,  # delegated (signed in) or organization (enabled by the CRM, app-only)
        "account": current.account_username,
        "locale": current.locale,
        "crm_time_zone": current.crm_time_zone,
        "mailbox_time_zone": current.mailbox_time_zone,
        "calendar": {**calendars.describe(current), "move": calendar_move.describe_move(current)},
        "subscription_expires_at": current.subscription_expires_at,
        "connected_at": current.connected_at,
        "disconnected_at": current.disconnected_at,
        "last_sync_at": current.last_sync_at,
        "last_reconcile_at": current.last_reconcile_at,
        "capture": current.capture,
        "held_deletions": held,  # Outlook deletions held by the mass-deletion guard (shared/flows/reconcile.py)
        "counts": links.counts(services.storage, tenant, user),
        "backfill": backfill_jobs.status(services.storage, tenant, user),
        "removal": removals.view(removal) if removal else None,  # "Remove sync" removing events
        "recent_errors": list(current.recent_errors),
    }
