"""All settings the service reads, read and validated once from the environment (design §5).

A missing or malformed setting raises ``SettingsError`` with one message naming it, so the host
fails at start instead of at the first user's request. Nothing here does I/O beyond ``os.environ``.

Storage follows the Functions host: ``AzureWebJobsStorage`` is a connection string locally
(Azurite), and in Azure the identity-based ``AzureWebJobsStorage__*`` family is used instead
(``accountName`` or ``queueServiceUri`` + ``tableServiceUri``, ``credential=managedidentity``,
``clientId`` of the user-assigned identity), so no key ever exists.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

STORAGE = "AzureWebJobsStorage"

# Every environment variable the code reads, with its default (None = required). infra/ must set
# exactly these; tests/unit/test_infra.py holds the two in step.
SETTING_NAMES: tuple[str, ...] = (
    "MS_CLIENT_ID",
    "MS_CLIENT_SECRET",
    "MS_TENANT",
    "MS_AUTHORITY_HOST",
    "GRAPH_API_BASE",
    "PUBLIC_BASE_URL",
    "CRM_SHARED_SECRET",
    "CRM_CALLBACK_SECRET",
    "CRM_CALLBACK_URL",
    "CRM_RETURN_ORIGINS",
    "TOKEN_ENCRYPTION_KEYS",
    "SYNC_WINDOW_PAST_DAYS",
    "SYNC_WINDOW_FUTURE_DAYS",
    "COMPLETED_ACTIVITIES",
    "WORK_QUEUE_SHARDS",
    "FANOUT_BATCH_SIZE",
    "FANOUT_SPREAD_SECONDS",
    "MS_CLIENT_CERTIFICATE",
)
MIN_SECRET_CHARS = 32
MIN_SECRET_BITS = 80  # estimated from the characters' frequencies; secrets.token_hex(32) gives ~240
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # a key id is one field of the v1.<kid>.<nonce>.<data> blob
# Scale knobs (README "Scale"): how many shards each work queue has (one trigger each), how many
# users one timer fan-out message carries, and over how many seconds a timer spreads its messages.
DEFAULT_WORK_QUEUE_SHARDS = 8
DEFAULT_FANOUT_BATCH_SIZE = 10
DEFAULT_FANOUT_SPREAD_SECONDS = 300
STORAGE_IDENTITY_SUFFIXES = ("accountName", "queueServiceUri", "tableServiceUri", "credential", "clientId")
# What App Service leaves in a setting when it cannot resolve a Key Vault reference (identity or role
# not effective yet): the reference text itself, which must never be used as the value.
KEY_VAULT_REFERENCE = "@microsoft.keyvault("


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it and says what is expected."""


@dataclass(frozen=True)
class StorageSettings:
    connection_string: str | None = None  # local: Azurite's well-known development account
    queue_url: str | None = None  # Azure: identity-based endpoints
    table_url: str | None = None
    managed_identity_client_id: str | None = None


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    ms_client_id: str
    ms_client_secret: str
    ms_tenant: str
    ms_authority_host: str
    graph_api_base: str
    public_base_url: str
    crm_shared_secrets: tuple[str, ...]  # the CRM's requests to us: any verifies (rotation)
    crm_callback_secrets: tuple[str, ...]  # our callbacks to the CRM: the first signs (rotation)
    crm_callback_url: str
    crm_return_origins: frozenset[str]
    token_encryption_keys: tuple[tuple[str, bytes], ...]  # (key id, 32-byte key); first encrypts
    sync_window_past_days: int
    sync_window_future_days: int
    completed_activities: str  # "keep" | "remove"
    work_queue_shards: int = DEFAULT_WORK_QUEUE_SHARDS
    fanout_batch_size: int = DEFAULT_FANOUT_BATCH_SIZE
    fanout_spread_seconds: int = DEFAULT_FANOUT_SPREAD_SECONDS
    # The app's certificate for app-only tokens (issue 19): PEM text with the private key and the
    # certificate (in Azure a Key Vault reference to the certificate's secret), or a path to such a
    # PEM file (locally); empty = app-only tokens use MS_CLIENT_SECRET.
    ms_client_certificate: str = ""

    @property
    def authority(self) -> str:
        return f"{self.ms_authority_host}/{self.ms_tenant}"

    @property
    def authority_is_microsoft(self) -> bool:
        """MSAL's instance discovery must be off for any other host (design §6)."""
        host = urlsplit(self.ms_authority_host).hostname or ""
        return (
            host.endswith(".microsoftonline.com")
            or host.endswith(".microsoftonline.us")
            or host.endswith(".chinacloudapi.cn")
        )

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_base_url}/api/auth/callback"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the first bad one."""
    env = os.environ if environ is None else environ
    read = _Reader(env)
    request_secrets = tuple(read.secrets("CRM_SHARED_SECRET"))
    callback_secrets = tuple(read.secrets("CRM_CALLBACK_SECRET"))
    if set(request_secrets) & set(callback_secrets):
        raise SettingsError(
            "Setting CRM_CALLBACK_SECRET is malformed: it must differ from every CRM_SHARED_SECRET, so whoever "
            "verifies callbacks cannot sign requests."
        )
    return Settings(
        storage=storage_settings(env),
        ms_client_id=read.required("MS_CLIENT_ID"),
        ms_client_secret=read.required("MS_CLIENT_SECRET"),
        ms_tenant=read.optional("MS_TENANT", "common"),
        ms_authority_host=read.url("MS_AUTHORITY_HOST", "https://login.microsoftonline.com", https=True),
        graph_api_base=read.url("GRAPH_API_BASE", "https://graph.microsoft.com/v1.0", https=True),
        public_base_url=read.url("PUBLIC_BASE_URL"),
        crm_shared_secrets=request_secrets,
        crm_callback_secrets=callback_secrets,
        crm_callback_url=read.url("CRM_CALLBACK_URL"),
        crm_return_origins=frozenset(
            _origin(o, "CRM_RETURN_ORIGINS") for o in read.listed("CRM_RETURN_ORIGINS")
        ),
        token_encryption_keys=parse_encryption_keys(read.required("TOKEN_ENCRYPTION_KEYS")),
        sync_window_past_days=read.integer("SYNC_WINDOW_PAST_DAYS", 30, lowest=0, highest=1825),
        sync_window_future_days=read.integer("SYNC_WINDOW_FUTURE_DAYS", 365, lowest=1, highest=1825),
        completed_activities=read.choice("COMPLETED_ACTIVITIES", "keep", ("keep", "remove")),
        work_queue_shards=work_queue_shards(env),
        fanout_batch_size=read.integer("FANOUT_BATCH_SIZE", DEFAULT_FANOUT_BATCH_SIZE, lowest=1, highest=100),
        fanout_spread_seconds=read.integer(
            "FANOUT_SPREAD_SECONDS", DEFAULT_FANOUT_SPREAD_SECONDS, lowest=0, highest=6 * 3600
        ),
        ms_client_certificate=read.certificate("MS_CLIENT_CERTIFICATE"),
    )


def work_queue_shards(environ: Mapping[str, str] | None = None) -> int:
    """``WORK_QUEUE_SHARDS`` alone: read at import by functions/ to register one trigger per shard,
    and by the senders (shared/store/work_queues.py), without loading any other setting."""
    if environ is None:
        return _process_shards()
    return _Reader(environ).integer("WORK_QUEUE_SHARDS", DEFAULT_WORK_QUEUE_SHARDS, lowest=1, highest=64)


@cache
def _process_shards() -> int:
    return work_queue_shards(os.environ)


@cache
def get() -> Settings:
    """The process-wide settings, read on first use."""
    return load()


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def optional(self, name: str, default: str) -> str:
        value = _value(self.env, name)
        return value or default

    def required(self, name: str) -> str:
        value = _value(self.env, name)
        if not value:
            raise SettingsError(
                f"Setting {name} is missing; it is required (see local.settings.example.json)."
            )
        return value

    def listed(self, name: str) -> list[str]:
        items = [item.strip() for item in self.required(name).split(",") if item.strip()]
        if not items:
            raise SettingsError(f"Setting {name} is empty; give one or more comma-separated values.")
        return items

    def secrets(self, name: str) -> list[str]:
        """Comma-separated signing secrets (rotation), each long and varied enough to resist guessing."""
        items = self.listed(name)
        for position, item in enumerate(items, 1):
            if len(item) < MIN_SECRET_CHARS or estimated_bits(item) < MIN_SECRET_BITS or _repeats(item):
                raise SettingsError(
                    f"Setting {name} is too weak (item {position}): use at least {MIN_SECRET_CHARS} random "
                    "characters, e.g. python -c 'import secrets; print(secrets.token_hex(32))'."
                )
        return items

    def url(self, name: str, default: str | None = None, *, https: bool = False) -> str:
        value = self.required(name) if default is None else self.optional(name, default)
        parts = urlsplit(value)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.scheme not in ("http", "https") or not parts.hostname or (https and parts.scheme != "https"):
            kind = "an https URL" if https else "an http(s) URL"
            raise SettingsError(f"Setting {name} is malformed: {value!r} is not {kind}.")
        if parts.scheme == "http" and not local:
            raise SettingsError(f"Setting {name} is malformed: {value!r} must use https outside localhost.")
        return value.rstrip("/")

    def integer(self, name: str, default: int, *, lowest: int, highest: int) -> int:
        raw = self.optional(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"Setting {name} is malformed: {raw!r} is not a whole number.") from None
        if not lowest <= value <= highest:
            raise SettingsError(f"Setting {name} is malformed: {value} is outside {lowest}..{highest}.")
        return value

    def certificate(self, name: str) -> str:
        """PEM text holding a private key and a certificate, or a path to a file (read later); the
        message never quotes the value (it is a private key)."""
        value = _value(self.env, name)
        if value.startswith("-----BEGIN") and not (
            "PRIVATE KEY-----" in value and "-----BEGIN CERTIFICATE-----" in value
        ):
            raise SettingsError(
                f"Setting {name} is malformed: the PEM must hold both the private key and the certificate."
            )
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.optional(name, default).lower()
        if value not in choices:
            raise SettingsError(f"Setting {name} is malformed: {value!r} is not one of {', '.join(choices)}.")
        return value


def storage_settings(env: Mapping[str, str], name: str = STORAGE) -> StorageSettings:
    """The storage account behind a binding's ``connection`` name, read as the Functions host does."""
    connection_string = _value(env, name)
    if connection_string:
        if "AccountName=" not in connection_string and "UseDevelopmentStorage=true" not in connection_string:
            raise SettingsError(f"Setting {name} is malformed: not a storage connection string.")
        return StorageSettings(connection_string=connection_string)
    identity = {suffix: _value(env, f"{name}__{suffix}") for suffix in STORAGE_IDENTITY_SUFFIXES}
    account = identity["accountName"]
    queue_url = identity["queueServiceUri"] or (account and f"https://{account}.queue.core.windows.net")
    table_url = identity["tableServiceUri"] or (account and f"https://{account}.table.core.windows.net")
    if not (queue_url and table_url):
        raise SettingsError(
            f"Setting {name} is missing: set a connection string (local) or "
            f"{name}__accountName / {name}__queueServiceUri and {name}__tableServiceUri (Azure)."
        )
    return StorageSettings(
        queue_url=queue_url, table_url=table_url, managed_identity_client_id=identity["clientId"] or None
    )


def _value(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if value.lower().startswith(KEY_VAULT_REFERENCE):
        raise SettingsError(
            f"Setting {name} is an unresolved Key Vault reference: the platform could not read the secret "
            "(check that the app's identity holds Key Vault Secrets User and is its keyVaultReferenceIdentity); "
            "not starting with the reference text as the value."
        )
    return value


def _origin(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise SettingsError(
            f"Setting {name} is malformed: {value!r} is not an origin like https://crm.example.com."
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


def estimated_bits(secret: str) -> float:
    """A rough entropy estimate: length times the Shannon entropy of the secret's own characters.
    It only catches the obviously weak (repeated or few characters); it cannot prove randomness."""
    counts = Counter(secret)
    per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    return per_char * len(secret)


def _repeats(secret: str) -> bool:
    """Made of one block said again ("abcdabcd..."): far weaker than its length suggests."""
    return any(
        len(secret) % size == 0 and secret == secret[:size] * (len(secret) // size)
        for size in range(1, len(secret) // 2 + 1)
    )


def parse_encryption_keys(raw: str) -> tuple[tuple[str, bytes], ...]:
    """``kid:base64key[,kid:base64key...]``, 32-byte AES-256 keys; the first one encrypts."""
    keys: list[tuple[str, bytes]] = []
    for item in raw.split(","):
        kid, sep, encoded = item.strip().partition(":")
        try:
            key = base64.b64decode(encoded, validate=True) if sep else b""
        except (binascii.Error, ValueError):
            key = b""
        if not KEY_ID.fullmatch(kid) or len(key) != 32 or any(k == kid for k, _ in keys):
            raise SettingsError(
                "Setting TOKEN_ENCRYPTION_KEYS is malformed: expected 'keyid:<base64 of 32 bytes>' items, "
                "comma-separated, with unique key ids of 1 to 32 characters A-Z a-z 0-9 _ -."
            )
        keys.append((kid, key))
    return tuple(keys)
