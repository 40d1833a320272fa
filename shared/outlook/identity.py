"""Microsoft identity through MSAL: the auth-code flow with PKCE for connecting, and per-user
access tokens afterwards, from a per-user ``SerializableTokenCache`` stored encrypted in Table
Storage (shared/store/token_crypto.py).

- The cache is written back only when MSAL changed it (a refresh rotated the refresh token), and
  only if nobody else wrote it meanwhile (ETag). When two workers refresh at once, the loser keeps
  its fresh access token and drops its cache copy: the winner's refresh token is as good.
- MSAL's errors are mapped here: ``invalid_grant`` and a missing account become AuthError (the user
  must reconnect), network and server failures TransientError.
- Instance discovery is off unless the authority is a Microsoft host (design §6), so the emulator
  is never bypassed by a call to the real login.microsoftonline.com.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from shared.ports import Storage
from shared.rules.errors import AuthError, ConflictError, TransientError
from shared.rules.settings import Settings
from shared.store import tables
from shared.store.token_crypto import decrypt, encrypt

SCOPES = ["Calendars.ReadWrite", "User.Read", "MailboxSettings.Read"]
# MSAL errors that mean the grant itself is gone, not that the service hiccupped.
_GRANT_ERRORS = {
    "invalid_grant",
    "interaction_required",
    "consent_required",
    "login_required",
    "invalid_client",
}


class Identity:
    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self._http_cache: dict[Any, Any] = {}  # OpenID metadata, shared by every MSAL app of the process
        self._lock = threading.Lock()

    def _app(self, cache: Any = None) -> Any:
        import msal

        return msal.ConfidentialClientApplication(
            self.settings.ms_client_id,
            client_credential=self.settings.ms_client_secret,
            authority=self.settings.authority,
            token_cache=cache,
            http_cache=self._http_cache,
            instance_discovery=self.settings.authority_is_microsoft,
            timeout=30,
        )

    # --- connecting -------------------------------------------------------------------------------

    def begin(self, login_hint: str | None) -> dict[str, Any]:
        """A new auth-code flow (state, PKCE verifier, nonce, auth_uri) to store until the callback."""
        try:
            return self._app().initiate_auth_code_flow(
                SCOPES,
                redirect_uri=self.settings.redirect_uri,
                login_hint=login_hint,
                prompt="select_account",
                # The code comes back in a form POST: never in a URL, browser history or a Referer
                # (RFC 9700 §4.3.1, as MSAL recommends).
                response_mode="form_post",
            )
        except Exception as error:  # noqa: BLE001 - MSAL raises plain exceptions when metadata is unreachable
            raise TransientError(f"identity provider unreachable: {type(error).__name__}") from None

    def redeem(self, flow: dict[str, Any], auth_response: dict[str, str]) -> tuple[dict[str, Any], str]:
        """Exchange the code; returns (id token claims, serialized token cache)."""
        import msal

        cache = msal.SerializableTokenCache()
        try:
            result = self._app(cache).acquire_token_by_auth_code_flow(flow, auth_response, scopes=SCOPES)
        except ValueError as error:  # MSAL's own check: state mismatch and the like
            raise AuthError(f"sign-in response rejected: {error}", code="invalid_response") from None
        except Exception as error:  # noqa: BLE001 - network failures surface as requests exceptions
            raise TransientError(f"identity provider unreachable: {type(error).__name__}") from None
        if "error" in result:
            raise AuthError(_describe(result), code=result.get("error"))
        return result.get("id_token_claims", {}), cache.serialize()

    # --- tokens in use ------------------------------------------------------------------------------

    def access_token(self, tenant: str, user: str, *, force_refresh: bool = False) -> str:
        """A valid Graph access token for the user, refreshing (and saving the cache) when needed;
        ``force_refresh`` redeems the refresh token even if the access token is still valid."""
        import msal

        row = self._load_row(tenant, user)
        if row is None:
            raise AuthError("no stored sign-in for this user", code="no_token_cache")
        cache = msal.SerializableTokenCache()
        cache.deserialize(
            decrypt(row["cache"], self.settings.token_encryption_keys, _aad(tenant, user)).decode()
        )
        app = self._app(cache)
        accounts = app.get_accounts()
        if not accounts:
            raise AuthError("the stored sign-in has no account", code="no_account")
        try:
            result = app.acquire_token_silent_with_error(
                SCOPES, account=accounts[0], force_refresh=force_refresh
            )
        except Exception as error:  # noqa: BLE001 - network failures during refresh
            raise TransientError(f"token refresh failed: {type(error).__name__}") from None
        if not result or "access_token" not in result:
            error = (result or {}).get("error", "no_token")
            if error in _GRANT_ERRORS or result is None:
                raise AuthError(_describe(result or {"error": error}), code=error)
            raise TransientError(_describe(result), code=error)
        if cache.has_state_changed:
            try:
                self.save_cache(tenant, user, cache.serialize(), etag=tables.etag_of(row))
            except ConflictError:
                pass  # someone refreshed concurrently; their refresh token is as good as ours
        return result["access_token"]

    def save_cache(self, tenant: str, user: str, serialized: str, *, etag: str | None = None) -> None:
        """Store the cache encrypted; with ``etag`` only if unchanged since read, else unconditionally."""
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": tables.key(tenant),
            "RowKey": tables.key(user),
            "cache": encrypt(serialized.encode(), self.settings.token_encryption_keys, _aad(tenant, user)),
            "refreshed_at": datetime.now(UTC),  # the token health timer keeps idle grants alive
        }
        table = self.storage.table(tables.TOKENS)
        with tables.storage_errors("saving the token cache"):
            if etag:
                table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            else:
                table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def forget(self, tenant: str, user: str) -> None:
        """Delete the user's token cache; no row is fine."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with tables.storage_errors("wiping the token cache"):
                self.storage.table(tables.TOKENS).delete_entity(tables.key(tenant), tables.key(user))
        except ResourceNotFoundError:
            pass

    def refreshed_at(self, tenant: str, user: str) -> datetime | None:
        row = self._load_row(tenant, user)
        return row.get("refreshed_at") if row else None

    def _load_row(self, tenant: str, user: str) -> Any:
        table = self.storage.table(tables.TOKENS)
        return tables.read(table, tables.key(tenant), tables.key(user), "reading the token cache")


def _aad(tenant: str, user: str) -> str:
    """Binds a ciphertext to its row: another user's row cannot be fed this cache."""
    return json.dumps(["token-cache", tenant, user])


def _describe(result: dict[str, Any]) -> str:
    """MSAL's error without anything secret: the error code and the first line of its description."""
    description = str(result.get("error_description", "")).splitlines()[:1]
    return f"{result.get('error', 'error')}: {description[0] if description else ''}".strip()
