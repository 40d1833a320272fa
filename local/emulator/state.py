"""In-memory state of the emulator: clock, apps, users/mailboxes, events, tokens, subscriptions, settings."""

from __future__ import annotations

import base64
import secrets
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from . import timezones


class Clock:
    """Emulator clock: real UTC time plus an offset that the control API can advance (no sleeping)."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()
        self.listeners: list = []  # callables run after each advance (the notifier wakes up)

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._offset += timedelta(seconds=seconds)
        for fn in list(self.listeners):
            fn()
        return self.now()

    def reset(self) -> None:
        with self._lock:
            self._offset = timedelta(0)

    @property
    def offset_seconds(self) -> float:
        return self._offset.total_seconds()


def outlook_id(prefix: bytes = b"\x00\x00\x00\x00") -> str:
    """An Outlook-looking id (URL-safe base64 with `=` padding, e.g. `AAMkAG...AAA=`). Case-sensitive."""
    raw = b"\x00\x03\x24\x00" + prefix + secrets.token_bytes(60)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def change_key() -> str:
    return base64.b64encode(b"\x00" + secrets.token_bytes(20)).decode("ascii")


def ical_uid() -> str:
    return "040000008200E00074C5B7101A82E00800000000" + secrets.token_hex(28).upper()


@dataclass
class App:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    display_name: str = "CRM calendar sync"
    tenant_id: str | None = None
    # "Allow public client flows" (Authentication blade): the device-code grant without a secret.
    public_client: bool = False
    # Application permissions the registration asks for (API permissions blade, type "Application"); an admin
    # consent grants them in a tenant and they become the `roles` of that tenant's app-only tokens.
    application_permissions: list[str] = field(
        default_factory=lambda: ["Calendars.ReadWrite", "MailboxSettings.Read"])
    certificates: list[AppCertificate] = field(default_factory=list)

    def public(self) -> dict:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "display_name": self.display_name,
            "tenant_id": self.tenant_id,
            "public_client": self.public_client,
            "application_permissions": list(self.application_permissions),
            "certificates": [c.public() for c in self.certificates],
        }


@dataclass
class AppCertificate:
    """A public certificate on the app registration (keyCredentials: AsymmetricX509Cert, usage Verify)."""

    thumbprint_sha1: str  # upper-case hex, as the portal shows it
    thumbprint_sha256: str
    public_key: object  # cryptography public key
    pem: str

    def public(self) -> dict:
        return {"thumbprint_sha1": self.thumbprint_sha1, "thumbprint_sha256": self.thumbprint_sha256}


@dataclass
class ServicePrincipal:
    """The app's enterprise application in one tenant. `granted_at` is set by an admin consent, which also
    grants `roles` (app role assignments); the app's home tenant has one without roles from the start."""

    id: str  # object id of the service principal
    tenant_id: str
    client_id: str
    roles: list[str]
    granted_at: datetime | None = None

    def public(self) -> dict:
        return {"tenant_id": self.tenant_id, "client_id": self.client_id, "roles": list(self.roles),
                "granted_at": timezones.format_utc_z(self.granted_at) if self.granted_at else None,
                "service_principal_id": self.id}


@dataclass
class Calendar:
    id: str
    name: str
    is_default: bool = False
    change_key: str = field(default_factory=change_key)
    color: str = "auto"
    hex_color: str = ""
    ext: dict[str, str] = field(default_factory=dict)  # single-value extended properties, as on events


@dataclass
class Event:
    id: str
    mailbox_id: str
    calendar_id: str
    ical_uid: str
    created: datetime
    modified: datetime
    change_key: str
    seq: int
    props: dict  # Graph properties other than those kept below
    start_tz: str
    end_tz: str
    is_all_day: bool
    start: datetime | None = None  # aware UTC instants (timed events)
    end: datetime | None = None
    start_date: date | None = None  # floating dates (all-day events)
    end_date: date | None = None
    transaction_id: str | None = None
    creation_fingerprint: str | None = None
    ext: dict[str, str] = field(default_factory=dict)  # singleValueExtendedProperties id -> value
    deleted: bool = False

    def instants(self, mailbox_zone) -> tuple[datetime, datetime]:
        """Start/end instants; all-day events are placed in the mailbox's own zone."""
        if self.is_all_day:
            return (
                timezones.midnight_utc(self.start_date, mailbox_zone),
                timezones.midnight_utc(self.end_date, mailbox_zone),
            )
        return self.start, self.end


@dataclass
class Mailbox:
    oid: str
    tenant_id: str
    upn: str
    display_name: str
    time_zone: str  # Windows name, as mailboxSettings reports it
    consent: str = "accept"  # or "refuse"
    locale: str = "en-US"
    # "work" (Microsoft 365: Teams meetings allowed) or "personal" (outlook.com: no online meeting provider)
    account_kind: str = "work"
    # a directory role that may grant tenant-wide admin consent (Global/Cloud Application/Application Administrator)
    is_admin: bool = False
    calendars: dict[str, Calendar] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)  # includes tombstones (deleted=True)
    seq: int = 0
    delta_generation: int = 0

    def default_calendar(self) -> Calendar:
        return next(c for c in self.calendars.values() if c.is_default)

    def zone(self):
        return timezones.resolve(self.time_zone)

    def public(self) -> dict:
        return {
            "id": self.oid,
            "oid": self.oid,
            "tenant_id": self.tenant_id,
            "upn": self.upn,
            "display_name": self.display_name,
            "time_zone": self.time_zone,
            "consent": self.consent,
            "locale": self.locale,
            "account_kind": self.account_kind,
            "is_admin": self.is_admin,
            "calendars": [{"id": c.id, "name": c.name, "is_default": c.is_default, "color": c.color,
                           "hex_color": c.hex_color, "ext": dict(c.ext)} for c in self.calendars.values()],
        }


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    oid: str
    tenant_id: str
    expires_at: datetime
    used: bool = False


@dataclass
class DeviceCode:
    """One device-code sign-in (RFC 8628 as the identity platform serves it)."""

    device_code: str
    user_code: str
    client_id: str
    tenant: str  # the tenant segment the flow was started on (common, organizations, a tenant id)
    scopes: list[str]
    expires_at: datetime  # emulator clock
    interval: int  # seconds; grows by 5 on every slow_down
    last_poll: float | None = None  # time.monotonic() of the last token poll
    state: str = "pending"  # pending, approved, declined, redeemed
    oid: str | None = None
    tenant_id: str | None = None


@dataclass
class AccessToken:
    token: str
    client_id: str
    tenant_id: str
    oid: str | None  # None for app-only tokens
    scopes: list[str]
    expires_at: datetime
    roles: list[str] = field(default_factory=list)  # app-only: the application permissions granted
    service_principal_id: str | None = None  # app-only: the service principal the token was issued for


@dataclass
class RefreshToken:
    token: str
    client_id: str
    oid: str
    tenant_id: str
    scopes: list[str]
    issued_at: datetime
    expired: bool = False  # forced through the control API


@dataclass
class Subscription:
    id: str
    client_id: str
    tenant_id: str
    mailbox_id: str
    creator_id: str | None
    resource: str
    calendar_id: str | None
    change_types: list[str]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires_at: datetime
    latest_tls: str = "v1_2"

    def public(self) -> dict:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": timezones.format_utc_z(self.expires_at),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": self.latest_tls,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


@dataclass
class Settings:
    # identity
    consent_mode: str = "auto"  # "auto" or "interactive"
    next_user: str | None = None  # one-shot: who signs in next
    default_user: str | None = None
    access_token_lifetime: int = 3600
    refresh_token_inactivity_days: int = 90
    device_code_interval: int = 5  # seconds between polls the device-code answer asks for (Entra: 5)
    device_code_lifetime: int = 900  # expires_in of a device code (Entra: 15 minutes)
    # throttling (Outlook: per app+mailbox 10,000 / 10 min; 4 concurrent)
    rate_limit: int = 10_000
    rate_window_seconds: float = 600.0
    concurrency_limit: int = 4
    concurrency_scope: str = "mailbox"  # "mailbox" or "app_mailbox"
    concurrency_retry_after: int = 1
    # events
    transaction_id_mode: str = "dedupe"  # "dedupe" or "duplicate"
    list_page_size: int = 10
    delta_page_size: int = 10
    # subscriptions / notifications
    validation_timeout: float = 10.0
    notification_timeout: float = 3.0
    notification_retry_seconds: float = 10.0  # emulator-clock seconds before a retry (doubles, max 600)
    notification_retry_window: float = 4 * 3600.0
    notifications_paused: bool = False
    drop_notifications_next: int = 0
    drop_notifications_probability: float = 0.0
    # batch
    shuffle_batch_responses: bool = True

    def public(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FaultRule:
    kind: str  # "503", "500", "429", "drop", "latency", "lost_response", "hold"
    count: int | None = None  # next N matching requests (None = unlimited, subject to probability)
    probability: float = 1.0
    seed: int | None = None
    retry_after: float | None = None
    latency_ms: int = 0
    method: str | None = None
    path_contains: str | None = None
    mailbox: str | None = None
    area: str = "graph"  # "graph", "identity" or "any"
    inner: bool = True  # also applies to $batch items (status faults only)
    duration_seconds: float | None = None  # applies only this long (emulator clock) from when added: an outage
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    hits: int = 0
    ends_at: str | None = None  # set when added, from duration_seconds

    def __post_init__(self) -> None:
        import random

        self._rng = random.Random(self.seed)  # noqa: S311 - test fault injection
        self._ends: datetime | None = None  # ends_at, parsed once

    def public(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def start(self, now: datetime) -> None:
        """The rule is in force from ``now``; one with a duration ends by itself."""
        if self.duration_seconds is not None:
            self._ends = now + timedelta(seconds=float(self.duration_seconds))
            self.ends_at = self._ends.isoformat().replace("+00:00", "Z")

    def over(self, now: datetime) -> bool:
        return self._ends is not None and now >= self._ends


class Store:
    """All mutable state; guarded by one re-entrant lock (handlers are short)."""

    def __init__(self, clock: Clock) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.apps: dict[str, App] = {}
            self.mailboxes: dict[str, Mailbox] = {}
            self.codes: dict[str, AuthCode] = {}
            self.device_codes: dict[str, DeviceCode] = {}
            self.access_tokens: dict[str, AccessToken] = {}
            self.refresh_tokens: dict[str, RefreshToken] = {}
            self.subscriptions: dict[str, Subscription] = {}
            self.deliveries: list[dict] = []
            self.delta_states: dict[str, dict] = {}
            self.settings = Settings()
            self.faults: list[FaultRule] = []
            self.windows: dict[tuple[str, str], deque] = {}
            self.counters: dict[str, dict[str, Counter]] = {}
            # (tenant_id, client_id) -> the app's service principal in that tenant (admin consent)
            self.service_principals: dict[tuple[str, str], ServicePrincipal] = {}
            # (tenant_id, client_id) -> mailboxes (oids) an app-only token may reach (Exchange RBAC for
            # Applications / application access policy); absent = every mailbox of the tenant
            self.app_scopes: dict[tuple[str, str], list[str]] = {}
            self.totals: Counter = Counter()
            self.clock.reset()
            self.delivery_cond = threading.Condition(self.lock)

    # --- users -------------------------------------------------------------------------------------
    def add_user(
        self,
        upn: str,
        display_name: str | None = None,
        time_zone: str = "UTC",
        oid: str | None = None,
        tenant_id: str | None = None,
        consent: str = "accept",
        locale: str = "en-US",
        account_kind: str = "work",
        is_admin: bool = False,
    ) -> Mailbox:
        with self.lock:
            oid = oid or str(uuid.uuid4())
            mb = Mailbox(
                oid=oid,
                tenant_id=tenant_id or "9188040d-6c67-4c5b-b112-36a304b66dad",
                upn=upn,
                display_name=display_name or upn.split("@")[0].title(),
                time_zone=timezones.windows_name(time_zone),
                consent=consent,
                locale=locale,
                account_kind=account_kind,
                is_admin=is_admin,
            )
            cal = Calendar(id=outlook_id(b"\x00\x00\x00\x01"), name="Calendar", is_default=True)
            mb.calendars[cal.id] = cal
            self.mailboxes[oid] = mb
            return mb

    def find_user(self, key: str) -> Mailbox | None:
        """By object id or UPN (case-insensitive), as /users/{id | userPrincipalName} does."""
        with self.lock:
            if key in self.mailboxes:
                return self.mailboxes[key]
            low = key.lower()
            for mb in self.mailboxes.values():
                if mb.oid.lower() == low or mb.upn.lower() == low:
                    return mb
            return None

    def resolve_tenant(self, tenant: str) -> str | None:
        """A tenant segment (GUID or a verified domain: the domain of a user's UPN) -> the tenant id."""
        with self.lock:
            if tenant in self.tenants():
                return tenant
            low = tenant.lower()
            for mb in self.mailboxes.values():
                if mb.upn.lower().rpartition("@")[2] == low:
                    return mb.tenant_id
            return None

    def service_principal(self, tenant_id: str, client_id: str) -> ServicePrincipal | None:
        """The app's service principal in a tenant (admin consent, or the home tenant's own)."""
        with self.lock:
            return self.service_principals.get((tenant_id, client_id))

    def add_app(self, app: App) -> App:
        """Register an app; its home tenant (if given) gets its service principal, without roles until an
        admin consents there (a registration made in the portal comes with its enterprise application)."""
        with self.lock:
            self.apps[app.client_id] = app
            if app.tenant_id and (app.tenant_id, app.client_id) not in self.service_principals:
                self.service_principals[(app.tenant_id, app.client_id)] = ServicePrincipal(
                    id=str(uuid.uuid4()), tenant_id=app.tenant_id, client_id=app.client_id, roles=[])
            return app

    def tenants(self) -> set[str]:
        with self.lock:
            return {m.tenant_id for m in self.mailboxes.values()} | {
                a.tenant_id for a in self.apps.values() if a.tenant_id
            }

    # --- counters ----------------------------------------------------------------------------------
    def count(self, mailbox: str | None, kind: str, endpoint: str) -> None:
        with self.lock:
            key = mailbox or "-"
            per = self._per(key)
            per[kind][endpoint] += 1
            self.totals[kind] += 1

    def _per(self, key: str) -> dict[str, Counter]:
        return self.counters.setdefault(key, {"requests": Counter(), "batch_inner": Counter(), "throttled": Counter(),
                                              "auth": Counter({"app": 0, "delegated": 0})})

    def count_auth(self, mailbox: str, app_only: bool) -> None:
        """Requests that reached a mailbox, by the kind of token: app-only (roles, no user) or delegated."""
        with self.lock:
            self._per(mailbox)["auth"]["app" if app_only else "delegated"] += 1

    def record_delivery(self, entry: dict) -> None:
        with self.lock:
            entry["seq"] = len(self.deliveries) + 1
            self.deliveries.append(entry)
            self.delivery_cond.notify_all()
