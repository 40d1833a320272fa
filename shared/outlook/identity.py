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
- App-only (issue 19, graph-facts-2 §1-2): one MSAL ``ConfidentialClientApplication`` per Microsoft
  tenant, authority ``{MS_AUTHORITY_HOST}/{tenant id}`` (never ``common``/``organizations``: client
  credentials there are unreliable), built on first use and reused, so MSAL's own cache keeps the
  app token until it nears expiry. The credential is the certificate (``MS_CLIENT_CERTIFICATE``: PEM
  or a path to one; RS256 assertion with the SHA-1 thumbprint) when set, else the client secret. A
  refusal because the app has no service principal in the tenant (AADSTS7000229, 700016, 65001) is
  ``OrganizationConsentRequired``; the key is never logged nor stored.
- The admin-consent URL is the v2 ``adminconsent`` endpoint for ``organizations`` with scope
  ``https://graph.microsoft.com/.default`` and our ``/api/auth/admin-callback`` as redirect.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from shared.ports import Storage
from shared.rules.errors import (
    AuthError,
    ConflictError,
    OrganizationConsentRequired,
    PermanentError,
    TransientError,
)
from shared.rules.settings import Settings
from shared.store import tables
from shared.store.token_crypto import decrypt, encrypt

SCOPES = ["Calendars.ReadWrite", "User.Read", "MailboxSettings.Read"]
APP_SCOPES = ["https://graph.microsoft.com/.default"]  # application permissions: only /.default
# The app has no service principal in the tenant: never consented, consent revoked, app deleted.
_NO_CONSENT_CODES = {7000229, 700016, 65001, 90094}
_NO_CONSENT_ERRORS = {"unauthorized_client", "consent_required"}
# A tenant id as the admin-consent answer and id tokens carry it (a GUID); names are refused.
TENANT_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
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
        self._tenant_apps: dict[str, Any] = {}  # Microsoft tenant id -> its app-only MSAL app (token cache)
        self._app_credential: Any = None

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


    # --- app-only (organisation mode) -------------------------------------------------------------------

    def admin_consent_url(self, state: str) -> str:
        """Where the organisation's admin consents once for every mailbox (graph-facts-2 §1.1)."""
        query = urlencode(
            {
                "client_id": self.settings.ms_client_id,
                "scope": APP_SCOPES[0],
                "redirect_uri": f"{self.settings.public_base_url}/api/auth/admin-callback",
                "state": state,
            }
        )
        return f"{self.settings.ms_authority_host}/organizations/v2.0/adminconsent?{query}"

    def app_token(self, microsoft_tenant: str, *, force_refresh: bool = False) -> str:
        """An app-only Graph token for the tenant (cached by MSAL); ``force_refresh`` drops the cached
        one (Graph rejected it). OrganizationConsentRequired when the tenant refuses the app."""
        if not TENANT_ID.fullmatch(microsoft_tenant or ""):
            raise PermanentError("not a Microsoft tenant id", code="invalid_tenant_id")
        app = self._tenant_app(microsoft_tenant.lower(), fresh=force_refresh)
        try:
            result = app.acquire_token_for_client(APP_SCOPES)
        except Exception as error:  # noqa: BLE001 - network failures surface as requests exceptions
            raise TransientError(f"identity provider unreachable: {type(error).__name__}") from None
        if result and "access_token" in result:
            return str(result["access_token"])
        result = result or {"error": "no_token"}
        codes = set(result.get("error_codes") or [])
        if codes & _NO_CONSENT_CODES or result.get("error") in _NO_CONSENT_ERRORS:
            raise OrganizationConsentRequired(_describe(result))
        if result.get("error") in ("invalid_client", "invalid_request", "invalid_scope"):
            # Our own credential or request is wrong (expired secret, unknown certificate): not the
            # organisation's doing, so nobody's state changes; the message retries, then fails loudly.
            raise PermanentError(_describe(result), code=str(result.get("error")))
        raise TransientError(_describe(result), code=result.get("error"))

    def _tenant_app(self, microsoft_tenant: str, *, fresh: bool) -> Any:
        import msal

        with self._lock:
            app = None if fresh else self._tenant_apps.get(microsoft_tenant)
            if app is None:
                credential = self._credential()
                try:  # MSAL reads the tenant's OpenID metadata here
                    app = msal.ConfidentialClientApplication(
                        self.settings.ms_client_id,
                        client_credential=credential,
                        authority=f"{self.settings.ms_authority_host}/{microsoft_tenant}",
                        http_cache=self._http_cache,
                        instance_discovery=self.settings.authority_is_microsoft,
                        timeout=30,
                    )
                except ValueError as error:
                    if _no_such_tenant(error):
                        raise OrganizationConsentRequired("AADSTS90002: the tenant does not exist") from None
                    raise TransientError(f"identity provider unreachable: {type(error).__name__}") from None
                except Exception as error:  # noqa: BLE001 - network failures surface as requests exceptions
                    raise TransientError(f"identity provider unreachable: {type(error).__name__}") from None
                self._tenant_apps[microsoft_tenant] = app
            return app

    def _credential(self) -> Any:
        """The certificate as MSAL takes it (read once), else the client secret."""
        if self._app_credential is None:
            pem = self.settings.ms_client_certificate
            if pem and not pem.startswith("-----BEGIN"):
                with open(pem, encoding="ascii") as file:  # a local path to the PEM
                    pem = file.read()
            self._app_credential = certificate_credential(pem) if pem else self.settings.ms_client_secret
        return self._app_credential


def _no_such_tenant(error: BaseException | None) -> bool:
    """MSAL wraps the tenant's metadata answer (400 ``invalid_tenant``, AADSTS90002) in a ValueError of its own."""
    while error is not None:
        if "90002" in str(error) or "invalid_tenant" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def certificate_credential(pem: str) -> dict[str, str]:
    """MSAL's ``client_credential`` for a PEM holding the private key and the certificate: the key and
    the certificate's SHA-1 thumbprint (``x5t``, what Entra matches the registered certificate by)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except ValueError:
        # Never the PEM in the message: it holds the private key.
        raise PermanentError("MS_CLIENT_CERTIFICATE is not a PEM private key and certificate", code="bad_certificate") from None
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {"private_key": key_pem, "thumbprint": certificate.fingerprint(hashes.SHA1()).hex().upper()}  # noqa: S303 - Entra's x5t is SHA-1 by definition


def _aad(tenant: str, user: str) -> str:
    """Binds a ciphertext to its row: another user's row cannot be fed this cache."""
    return json.dumps(["token-cache", tenant, user])


def _describe(result: dict[str, Any]) -> str:
    """MSAL's error without anything secret: the error code and the first line of its description."""
    description = str(result.get("error_description", "")).splitlines()[:1]
    return f"{result.get('error', 'error')}: {description[0] if description else ''}".strip()
