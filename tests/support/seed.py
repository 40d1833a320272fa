"""Many connected users, fast: one user signs in through the real flow (connect, Microsoft's page,
our callback), and every other user is a copy of that one, written straight into the two places
the real flow writes:

- **the emulator's state** (in process): a mailbox per user (``Store.add_user``), a refresh token
  the identity endpoint honours (``Store.refresh_tokens``) and a Graph subscription on the user's
  events (``Store.subscriptions``) with the chosen expiry;
- **Azurite's tables**: the ``Connections`` row (state ``connected``, account, subscription id and
  expiry), the ``Tokens`` row (the template's MSAL cache with the account, tenant, username and
  refresh token swapped, its access tokens dropped, encrypted with the service's key for that
  user) and the ``Subscriptions`` row (id -> tenant, user, clientState), in entity-group
  transactions of up to 100 rows per partition.

A copy behaves as a signed-in user: the first token call refreshes against the emulator, Graph
answers for its mailbox, its subscription can be renewed. Used by the renewal e2e test (300 users)
and bench/bench_scale.py (20,000 users in 200 tenants)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.outlook.identity import _aad  # how the service binds a cache to its row
from shared.rules.settings import parse_encryption_keys
from shared.store import connections, tables
from shared.store.token_crypto import decrypt, encrypt
from tests.e2e.push.conftest import CrmUser, connect_user


@dataclass(frozen=True)
class Seeded:
    tenant: str
    user: str
    oid: str
    upn: str
    subscription_id: str


def seed_users(
    stack: Any,
    tenants: int,
    users_per_tenant: int,
    *,
    expires_in: timedelta,
    prefix: str | None = None,
    workers: int = 8,
) -> tuple[CrmUser, list[Seeded]]:
    """Sign one template user in, then write ``tenants * users_per_tenant`` copies (the template is
    not among them); every copy's subscription expires ``expires_in`` from now."""
    template = connect_user(stack)
    prefix = prefix or f"seed-{uuid.uuid4().hex[:6]}"
    keys = parse_encryption_keys(stack.secrets["TOKEN_ENCRYPTION_KEYS"])
    store = stack.emulator.store
    row = stack.storage.table(tables.TOKENS).get_entity(
        tables.key(template.tenant), tables.key(template.user)
    )
    cache_text = decrypt(row["cache"], keys, _aad(template.tenant, template.user)).decode()
    cache = json.loads(cache_text)
    cache["AccessToken"] = {}  # the first call of each copy refreshes with its own refresh token
    template_rt = next(iter(cache["RefreshToken"].values()))["secret"]
    with store.lock:
        rt = store.refresh_tokens[template_rt]
        sub = next(s for s in store.subscriptions.values() if s.mailbox_id == template.oid)
        template_tid = store.mailboxes[template.oid].tenant_id
    base = connections.get(stack.storage, template.tenant, template.user)
    expires = datetime.now(UTC) + expires_in
    expires_text = expires.isoformat().replace("+00:00", "Z")
    template_text = json.dumps(cache)

    def tenant_batch(t: int) -> list[Seeded]:
        tenant = f"{prefix}-t{t:03d}"
        tid = str(uuid.uuid4())
        made: list[Seeded] = []
        conn_rows, token_rows = [], []
        for u in range(users_per_tenant):
            user, oid = f"user-{u:04d}", str(uuid.uuid4())
            upn = f"{prefix}-{t}-{u}@contoso.example"
            secret = f"rt-{uuid.uuid4().hex}"
            subscription_id = str(uuid.uuid4())
            with store.lock:
                mailbox = store.add_user(upn, time_zone="Romance Standard Time", oid=oid, tenant_id=tid)
                store.refresh_tokens[secret] = replace(
                    rt, token=secret, oid=oid, tenant_id=tid, issued_at=store.clock.now()
                )
                store.subscriptions[subscription_id] = replace(
                    sub,
                    id=subscription_id,
                    mailbox_id=mailbox.oid,
                    tenant_id=tid,
                    resource=f"/users/{oid}/events",
                )
                store.subscriptions[subscription_id].expires_at = expires
            text = (
                template_text.replace(template.oid, oid)
                .replace(template_tid, tid)
                .replace(template.upn, upn)
                .replace(template_rt, secret)
            )
            token_rows.append(
                {
                    "PartitionKey": tables.key(tenant),
                    "RowKey": tables.key(user),
                    "cache": encrypt(text.encode(), keys, _aad(tenant, user)),
                    "refreshed_at": datetime.now(UTC),
                }
            )
            seeded = replace(
                base,
                tenant=tenant,
                user=user,
                account_oid=oid,
                account_tid=tid,
                account_username=upn,
                subscription_id=subscription_id,
                subscription_expires_at=expires_text,
                recent_errors=(),
                etag=None,
            )
            conn_rows.append(_connection_entity(seeded))
            made.append(Seeded(tenant, user, oid, upn, subscription_id))
        _insert(stack.storage.table(tables.CONNECTIONS), conn_rows)
        _insert(stack.storage.table(tables.TOKENS), token_rows)
        subs = stack.storage.table(tables.SUBSCRIPTIONS)
        for s in made:
            subs.upsert_entity(
                {
                    "PartitionKey": tables.key(s.subscription_id),
                    "RowKey": "",
                    "tenant": s.tenant,
                    "user": s.user,
                    "client_state": sub.client_state,
                    "expires_at": expires_text,
                }
            )
        return made

    with ThreadPoolExecutor(workers) as pool:
        seeded = [s for batch in pool.map(tenant_batch, range(tenants)) for s in batch]
    return template, seeded


def _connection_entity(connection: connections.Connection) -> dict[str, Any]:
    from dataclasses import asdict

    entity = {
        k: v for k, v in asdict(connection).items() if k not in ("tenant", "user", "etag") and v is not None
    }
    entity.update(
        PartitionKey=tables.key(connection.tenant),
        RowKey=tables.key(connection.user),
        recent_errors="[]",
        tenant=connection.tenant,
        user=connection.user,
    )
    return entity


def _insert(table: Any, rows: list[dict[str, Any]]) -> None:
    """Entity-group transactions: at most 100 rows, one partition each."""
    for chunk in _chunks(rows, 100):
        table.submit_transaction([("upsert", row) for row in chunk])


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
