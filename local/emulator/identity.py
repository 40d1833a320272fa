"""Microsoft identity platform (v2.0 endpoints) as MSAL for Python uses them.

OpenID configuration, instance discovery, JWKS, /authorize (auto-consent or a consent page), /devicecode
with its sign-in page (/devicelogin) and /token (authorization_code with PKCE, refresh_token with rotation,
client_credentials, device_code with authorization_pending, slow_down, expired_token)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import time
import uuid
from datetime import timedelta
from urllib.parse import urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .state import AccessToken, App, AuthCode, DeviceCode, RefreshToken, ServicePrincipal, Store
from .timezones import format_utc_z
from .web import Request, Response

GRAPH_RESOURCE_APP_ID = "00000003-0000-0000-c000-000000000000"
GRAPH_PREFIX = "https://graph.microsoft.com/"
RESERVED_SCOPES = {"openid", "profile", "offline_access", "email"}
META_TENANTS = {"common", "organizations", "consumers"}
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRAPH_RESOURCES = {"https://graph.microsoft.com", GRAPH_RESOURCE_APP_ID}
# Client assertions carry the client's own clock; Entra tolerates some skew (emulator: 5 minutes).
ASSERTION_LEEWAY_SECONDS = 300
DEVICE_LOGIN_PATH = "/devicelogin"
# Entra's user codes are short upper-case strings; no 0/O/1/I so a person can type them.
_USER_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

_IDENTITY_PATH = re.compile(r"^/([^/]+)/(v2\.0/\.well-known/openid-configuration|discovery/v2\.0/keys|"
                            r"discovery/keys|discovery/instance|oauth2/v2\.0/authorize|oauth2/v2\.0/token|"
                            r"oauth2/v2\.0/devicecode|v2\.0/adminconsent)$")


def is_identity_path(path: str) -> bool:
    return bool(_IDENTITY_PATH.match(path))


def normalize_scope(scope: str) -> str:
    """`https://graph.microsoft.com/Calendars.ReadWrite` and `Calendars.ReadWrite` are the same permission."""
    if scope.lower().startswith(GRAPH_PREFIX):
        return scope[len(GRAPH_PREFIX):]
    return scope


class Identity:
    def __init__(self, store: Store, base_url: str) -> None:
        self.store = store
        self.base_url = base_url
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)

    # ------------------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        m = _IDENTITY_PATH.match(req.path)
        if not m:
            return _oauth_error(404, "invalid_request", "AADSTS900561: The endpoint only accepts POST requests.")
        tenant, what = m.group(1), m.group(2)
        if what == "discovery/instance":
            return self.instance_discovery(req)
        known = self._tenant_known(tenant)
        if not known:
            return _oauth_error(
                400, "invalid_tenant",
                f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.", codes=[90002])
        if what.endswith("openid-configuration"):
            return Response.plain_json(self.openid_configuration(tenant))
        if what.endswith("keys"):
            return Response.plain_json(self.jwks())
        if what.endswith("authorize"):
            return self.authorize(req, tenant)
        if what.endswith("adminconsent"):
            return self.admin_consent(req, tenant)
        if req.method != "POST":
            return _oauth_error(405, "invalid_request", "AADSTS900561: The endpoint only accepts POST requests.")
        if what.endswith("devicecode"):
            return self.device_code(req, tenant)
        return self.token(req, tenant)

    def _tenant_known(self, tenant: str) -> bool:
        return tenant.lower() in META_TENANTS or self.store.resolve_tenant(tenant) is not None

    # --- metadata ------------------------------------------------------------------------------------
    def issuer(self, tenant_id: str) -> str:
        return f"{self.base_url}/{tenant_id}/v2.0"

    def openid_configuration(self, tenant: str) -> dict:
        b = self.base_url
        issuer_tenant = "{tenantid}" if tenant.lower() in META_TENANTS else tenant
        return {
            "token_endpoint": f"{b}/{tenant}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{b}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{b}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{b}/oidc/userinfo",
            "authorization_endpoint": f"{b}/{tenant}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{b}/{tenant}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{b}/{tenant}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce",
                                 "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }

    def instance_discovery(self, req: Request) -> Response:
        """What MSAL asks `{host}/common/discovery/instance?api-version=1.0&authorization_endpoint=...` for."""
        endpoint = req.query.get("authorization_endpoint", "")
        parts = urlsplit(endpoint)
        tenant = parts.path.strip("/").split("/")[0] if parts.path.strip("/") else "common"
        host = urlsplit(self.base_url).netloc
        return Response.plain_json({
            "tenant_discovery_endpoint": f"{self.base_url}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })

    def jwks(self) -> dict:
        from jwt.algorithms import RSAAlgorithm

        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    # --- authorize -----------------------------------------------------------------------------------
    def _client_and_redirect(self, req: Request) -> tuple[dict[str, str], App, str] | Response:
        """The request's parameters (query, and form for a POST), the app and its redirect URI, once the app is
        known and the URI registered; else the error page Entra shows (no redirect to an unknown URI)."""
        params = dict(req.query)
        if req.method == "POST":
            params.update(req.form())
        client_id = params.get("client_id", "")
        app = self.store.apps.get(client_id)
        if app is None:
            return _error_page(
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            return _error_page(
                f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does not match the "
                f"redirect URIs configured for the application '{client_id}'.")
        return params, app, redirect_uri

    def authorize(self, req: Request, tenant: str) -> Response:
        checked = self._client_and_redirect(req)
        if isinstance(checked, Response):
            return checked
        params, app, redirect_uri = checked
        client_id = app.client_id
        state = params.get("state")
        mode = params.get("response_mode") or "query"

        def fail(error: str, description: str) -> Response:
            return _auth_response(redirect_uri, mode, {"error": error, "error_description": description,
                                                       "state": state})

        if params.get("response_type") != "code":
            return fail("unsupported_response_type",
                        "AADSTS700054: response_type 'id_token' is not enabled for the application.")
        method = params.get("code_challenge_method")
        if params.get("code_challenge") and (method or "plain") not in ("S256", "plain"):
            return fail("invalid_request", "AADSTS501491: Invalid code_challenge_method.")
        scopes = (params.get("scope") or "").split()
        if not scopes:
            return fail("invalid_request", "AADSTS900144: The request body must contain the following "
                                           "parameter: 'scope'.")

        with self.store.lock:
            settings = self.store.settings
            decided = req.method == "POST" and params.get("consent") in ("accept", "refuse")
            user = None
            if decided:
                user = self.store.find_user(params.get("user_id", ""))
            else:
                hint = params.get("login_hint")
                if hint:
                    user = self.store.find_user(hint)
                if user is None and settings.next_user:
                    user = self.store.find_user(settings.next_user)
                    settings.next_user = None
                if user is None and settings.default_user:
                    user = self.store.find_user(settings.default_user)
                candidates = self._candidates(tenant)
                if user is None and len(candidates) == 1:
                    user = candidates[0]
            if user is not None and tenant.lower() not in META_TENANTS and user.tenant_id != tenant:
                return fail("invalid_request", f"AADSTS50020: User account '{user.upn}' does not exist in "
                                               f"tenant '{tenant}'.")
            if not decided and (settings.consent_mode == "interactive" or user is None):
                return self._consent_page(req, tenant, params, app, user, scopes)
            if user is None:
                return fail("invalid_request", "AADSTS50058: A silent sign-in request was sent but no user is "
                                               "signed in.")
            refused = (params.get("consent") == "refuse") if decided else (user.consent == "refuse")
            if refused:
                return fail("access_denied", "AADSTS65004: User declined to consent to access the app.")
            code = "1.A" + secrets.token_urlsafe(48)
            self.store.codes[code] = AuthCode(
                code=code, client_id=client_id, redirect_uri=redirect_uri, scopes=scopes,
                nonce=params.get("nonce"), code_challenge=params.get("code_challenge"),
                code_challenge_method=method or ("plain" if params.get("code_challenge") else None),
                oid=user.oid, tenant_id=user.tenant_id,
                expires_at=self.store.clock.now() + timedelta(minutes=10))
        return _auth_response(redirect_uri, mode, {"code": code, "state": state,
                                                   "session_state": str(uuid.uuid4())})

    def _candidates(self, tenant: str):
        users = list(self.store.mailboxes.values())
        if tenant.lower() not in META_TENANTS:
            users = [u for u in users if u.tenant_id == tenant]
        return users

    def _consent_page(self, req, tenant, params, app, user, scopes) -> Response:
        lang = (params.get("ui_locales") or req.headers.get("Accept-Language") or "en").lower()
        if user is not None and not params.get("ui_locales"):
            lang = user.locale.lower()
        es = lang.startswith("es")
        t = {
            "title": "Permisos solicitados" if es else "Permissions requested",
            "who": "Cuenta" if es else "Account",
            "asks": "solicita permiso para:" if es else "wants permission to:",
            "yes": "Sí" if es else "Yes",
            "no": "Cancelar" if es else "Cancel",
        }
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v or "")}">'
            for k, v in params.items() if k not in ("consent", "user_id"))
        options = "".join(
            f'<option value="{html.escape(u.oid)}"{" selected" if user and u.oid == user.oid else ""}>'
            f"{html.escape(u.display_name)} &lt;{html.escape(u.upn)}&gt;</option>"
            for u in self._candidates(tenant))
        scope_items = "".join(f"<li>{html.escape(s)}</li>" for s in scopes if s not in RESERVED_SCOPES)
        action = html.escape(f"{self.base_url}{req.path}")
        page = f"""<!doctype html><html lang="{'es' if es else 'en'}"><head><meta charset="utf-8">
<title>{t['title']}</title></head><body>
<h1>{t['title']}</h1>
<p><b>{html.escape(app.display_name)}</b> {t['asks']}</p><ul>{scope_items}</ul>
<form method="post" action="{action}">{hidden}
<label>{t['who']} <select name="user_id">{options}</select></label>
<button type="submit" name="consent" value="accept">{t['yes']}</button>
<button type="submit" name="consent" value="refuse">{t['no']}</button>
</form></body></html>"""
        return Response.html(page)

    # --- admin consent (ENTRA v2-admin-consent.md) ----------------------------------------------------
    def admin_consent(self, req: Request, tenant: str) -> Response:
        """`GET /{tenant}/v2.0/adminconsent?client_id&scope&redirect_uri&state`: an administrator of the
        tenant signs in and grants the app's application permissions tenant-wide (a service principal with
        app role assignments). Sign-in page (field `login`), then, in `interactive` consent mode, a consent
        page (`consent=accept|refuse`); in `auto` mode the signed-in user's registered `consent` decides."""
        checked = self._client_and_redirect(req)
        if isinstance(checked, Response):
            return checked
        params, app, redirect_uri = checked
        client_id = app.client_id
        state = params.get("state")

        def fail(error: str, description: str, code: int | None = None) -> Response:
            # Observed error redirects (MicrosoftDocs/azure-docs#114009): no `tenant` parameter.
            return _auth_response(redirect_uri, "query", {
                "error": error, "error_description": description,
                "error_uri": f"https://login.microsoftonline.com/error?code={code}" if code else None,
                "admin_consent": "True", "state": state})

        if tenant.lower() in ("common", "consumers"):
            # "Do not use 'common'" (v2-admin-consent.md); Entra's answer there (MicrosoftDocs/azure-docs#45151).
            return _auth_response(redirect_uri, "query", {
                "error": "invalid_request",
                "error_description": "The provided request must include a 'response_type' input parameter.",
                "state": state})
        scopes = (params.get("scope") or "").split()
        if not scopes:
            return fail("invalid_request", "AADSTS900144: The request body must contain the following parameter: "
                                           "'scope'.", 900144)
        tenant_id = None if tenant.lower() in META_TENANTS else self.store.resolve_tenant(tenant)
        es = (params.get("ui_locales") or req.headers.get("Accept-Language") or "en").lower().startswith("es")
        with self.store.lock:
            settings = self.store.settings
            login = (params.get("login") or "").strip()
            user = None
            if login:
                user = self.store.find_user(login)
                if user is None:
                    return _admin_sign_in_page(es, req, self.base_url, params, app.display_name, login,
                                               error="AADSTS50034: " + ("La cuenta no existe." if es else
                                                                        "The user account does not exist."))
            else:
                if params.get("login_hint"):
                    user = self.store.find_user(params["login_hint"])
                if user is None and settings.next_user:
                    user = self.store.find_user(settings.next_user)
                    settings.next_user = None
                if user is None:
                    return _admin_sign_in_page(es, req, self.base_url, params, app.display_name, "")
            if tenant_id is not None and user.tenant_id != tenant_id:
                return fail("access_denied", f"AADSTS50020: User account '{user.upn}' from identity provider "
                                             f"'https://sts.windows.net/{user.tenant_id}/' does not exist in tenant "
                                             f"'{tenant}' and cannot access the application '{client_id}'"
                                             f"({app.display_name}) in that tenant.", 50020)
            if not user.is_admin:
                return fail("access_denied", "AADSTS90094: The grant requires admin permission.", 90094)
            decision = params.get("consent")
            if decision not in ("accept", "refuse"):
                if settings.consent_mode == "interactive":
                    return _admin_consent_page(es, req, self.base_url, params, app, user, scopes)
                decision = user.consent
            if decision == "refuse":
                return fail("access_denied", "AADSTS65004: User declined to consent to access the app.", 65004)
            # "In order to request app permissions, you must use the /.default value" (v2-admin-consent.md):
            # dynamic scopes are delegated grants for everyone; the app's roles need {Graph}/.default.
            asks_roles = any(s.endswith("/.default") and s[:-len("/.default")].rstrip("/").lower()
                             in GRAPH_RESOURCES for s in scopes)
            self.record_admin_consent(user.tenant_id, app, None if asks_roles else [])
        return _auth_response(redirect_uri, "query", {"admin_consent": "True", "tenant": user.tenant_id,
                                                      "scope": " ".join(scopes), "state": state})

    def record_admin_consent(self, tenant_id: str, app, roles: list[str] | None) -> ServicePrincipal:
        """The tenant now has the app's service principal with its application permissions granted."""
        with self.store.lock:
            sp = self.store.service_principal(tenant_id, app.client_id)
            if sp is None:
                sp = ServicePrincipal(id=str(uuid.uuid4()), tenant_id=tenant_id, client_id=app.client_id, roles=[])
                self.store.service_principals[(tenant_id, app.client_id)] = sp
            sp.roles = list(app.application_permissions if roles is None else roles)
            sp.granted_at = self.store.clock.now()
            return sp

    # --- token ---------------------------------------------------------------------------------------
    def token(self, req: Request, tenant: str) -> Response:
        form = req.form()
        if form.get("grant_type") == DEVICE_CODE_GRANT:
            return self._grant_device_code(form, req)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = req.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                cid, _, sec = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            except ValueError:
                cid, sec = "", ""
            client_id, secret = client_id or cid, sec
        with self.store.lock:
            app = self.store.apps.get(client_id or "")
            if app is None:
                return _oauth_error(400, "unauthorized_client",
                                    f"AADSTS700016: Application with identifier '{client_id}' was not found in "
                                    "the directory.", codes=[700016])
            if form.get("client_assertion") or form.get("client_assertion_type"):
                refused = self._check_assertion(form, app, tenant)
                if refused is not None:
                    return refused
                by_certificate = True
            elif not secret:
                return _oauth_error(401, "invalid_client",
                                    "AADSTS7000218: The request body must contain the following parameter: "
                                    "'client_assertion' or 'client_secret'.", codes=[7000218])
            elif not secrets.compare_digest(secret, app.client_secret):
                return _oauth_error(401, "invalid_client",
                                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being "
                                    "sent in the request is the client secret value, not the client secret ID, "
                                    f"for a secret added to app '{client_id}'.", codes=[7000215])
            else:
                by_certificate = False
            grant = form.get("grant_type")
            if grant == "authorization_code":
                return self._grant_code(form, app)
            if grant == "refresh_token":
                return self._grant_refresh(form, app)
            if grant == "client_credentials":
                return self._grant_client_credentials(form, app, tenant, by_certificate)
            return _oauth_error(400, "unsupported_grant_type",
                                f"AADSTS70003: The app requested an unsupported grant type '{grant}'.")

    def _grant_code(self, form: dict, app) -> Response:
        now = self.store.clock.now()
        code = self.store.codes.get(form.get("code") or "")
        if code is None or code.client_id != app.client_id:
            return _oauth_error(400, "invalid_grant", "AADSTS9002313: Invalid request. Request is malformed or "
                                                      "invalid.", codes=[9002313])
        if code.used:
            return _oauth_error(400, "invalid_grant", "AADSTS54005: OAuth2 Authorization code was already "
                                                      "redeemed, please retry with a new valid code.",
                                codes=[54005])
        if now > code.expires_at:
            return _oauth_error(400, "invalid_grant", "AADSTS70008: The provided authorization code or refresh "
                                                      "token has expired due to inactivity.", codes=[70008])
        if form.get("redirect_uri") != code.redirect_uri:
            return _oauth_error(400, "invalid_grant", "AADSTS500117: The reply uri specified in the request "
                                                      "isn't expected.", codes=[500117])
        if code.code_challenge:
            verifier = form.get("code_verifier") or ""
            if code.code_challenge_method == "S256":
                computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
                computed = computed.decode("ascii").rstrip("=")
            else:
                computed = verifier
            if not verifier or not secrets.compare_digest(computed, code.code_challenge):
                return _oauth_error(400, "invalid_grant", "AADSTS501481: The Code_Verifier does not match the "
                                                          "code_challenge supplied in the authorization request.",
                                    codes=[501481])
        code.used = True
        scopes = (form.get("scope") or " ".join(code.scopes)).split()
        return self._issue(app, code.oid, code.tenant_id, scopes, nonce=code.nonce,
                           want_client_info=form.get("client_info") == "1")

    def _grant_refresh(self, form: dict, app) -> Response:
        now = self.store.clock.now()
        rt = self.store.refresh_tokens.get(form.get("refresh_token") or "")
        if rt is None or rt.client_id != app.client_id:
            return _oauth_error(400, "invalid_grant", "AADSTS9002313: Invalid request. Request is malformed or "
                                                      "invalid.", codes=[9002313])
        inactive_limit = timedelta(days=self.store.settings.refresh_token_inactivity_days)
        if rt.expired or now - rt.issued_at > inactive_limit:
            days = self.store.settings.refresh_token_inactivity_days
            return _oauth_error(
                400, "invalid_grant",
                f"AADSTS700082: The refresh token has expired due to inactivity. The token was issued on "
                f"{format_utc_z(rt.issued_at)} and was inactive for {days}.00:00:00.", codes=[700082],
                suberror="bad_token")
        if self.store.mailboxes.get(rt.oid) is None:
            return _oauth_error(400, "invalid_grant", "AADSTS50034: The user account does not exist in the "
                                                      "directory.", codes=[50034])
        requested = (form.get("scope") or " ".join(rt.scopes)).split()
        granted = {normalize_scope(s).lower() for s in rt.scopes}
        extra = [s for s in requested if s not in RESERVED_SCOPES and normalize_scope(s).lower() not in granted]
        if extra:
            return _oauth_error(400, "invalid_grant", "AADSTS65001: The user or administrator has not consented "
                                                      f"to use the application. Scopes: {' '.join(extra)}",
                                codes=[65001], suberror="consent_required")
        return self._issue(app, rt.oid, rt.tenant_id, requested, nonce=None,
                           want_client_info=form.get("client_info") == "1")

    def _check_assertion(self, form: dict, app, tenant: str) -> Response | None:
        """A certificate credential (ENTRA certificate-credentials.md): a JWT signed with the private key of a
        certificate registered on the app, found by `x5t` (SHA-1, RS256, what MSAL sends for a PEM key and a
        thumbprint) or `x5t#S256` (SHA-256, PS256: MSAL for a PFX, or a PEM key with its public certificate).
        `aud` = this token endpoint, `iss` = `sub` = client id, `exp` (and `nbf` when present) against the
        wall clock with 5 minutes of skew, `jti` required (not checked for reuse: MSAL reuses an assertion
        for up to 540 s)."""

        def refuse(code: int, description: str) -> Response:
            return _oauth_error(401, "invalid_client", f"AADSTS{code}: {description}", codes=[code])

        if form.get("client_assertion_type") != JWT_BEARER:
            return _oauth_error(400, "invalid_request", "client_assertion_type must be "
                                                        f"'{JWT_BEARER}'.")
        assertion = form.get("client_assertion") or ""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return refuse(50027, "JWT token is invalid or malformed.")
        alg = header.get("alg")
        by_sha256 = header.get("x5t#S256")
        raw = by_sha256 or header.get("x5t") or ""
        try:
            thumbprint = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex().upper()
        except (ValueError, TypeError):
            thumbprint = ""
        cert = next((c for c in app.certificates if thumbprint and thumbprint ==
                     (c.thumbprint_sha256 if by_sha256 else c.thumbprint_sha1)), None)
        if cert is None:
            return refuse(700027, "The certificate with identifier used to sign the client assertion is not "
                                  "registered on application. [Reason - The key was not found., Thumbprint of key "
                                  f"used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or "
                                  "directly use MS Graph to see configured keys for app Id "
                                  f"'{app.client_id}'.]")
        if alg not in ("RS256", "PS256"):
            return refuse(700027, f"Client assertion failed signature validation. (alg '{alg}' not supported)")
        try:
            claims = jwt.decode(assertion, cert.public_key, algorithms=[alg],
                                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False, "verify_iss": False})
        except jwt.PyJWTError:
            return refuse(700027, "Client assertion failed signature validation.")
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return refuse(700021, "Client assertion application identifier doesn't match 'client_id' parameter.")
        tenant_id = self.store.resolve_tenant(tenant) if tenant.lower() not in META_TENANTS else None
        expected = {f"{self.base_url}/{t}/oauth2/v2.0/token" for t in (tenant, tenant_id) if t}
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in expected for a in auds):
            return refuse(50012, f"Client assertion audience claim does not match Realm issuer. (aud '{aud}', "
                                 f"expected '{sorted(expected)[0]}')")
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or (nbf is not None and not isinstance(nbf, int | float)) \
                or now > exp + ASSERTION_LEEWAY_SECONDS or (nbf is not None and nbf > now + ASSERTION_LEEWAY_SECONDS):
            return refuse(700024, f"Client assertion is not within its valid time range. Current time: "
                                  f"{int(now)}, assertion valid from {nbf}, expiry time of assertion {exp}.")
        if not claims.get("jti"):
            return refuse(50012, "Client assertion is missing the 'jti' claim.")
        return None

    def _grant_client_credentials(self, form: dict, app, tenant: str, by_certificate: bool) -> Response:
        """ENTRA v2-oauth2-client-creds-grant-flow.md: scope `{resource}/.default`, a tenant authority, and the
        app's service principal in that tenant (admin consent); the token's `roles` are the application
        permissions granted there."""
        scopes = (form.get("scope") or "").split()
        if not scopes:
            return _oauth_error(400, "invalid_request", "AADSTS900144: The request body must contain the following "
                                                        "parameter: 'scope'.", codes=[900144])
        if any(not s.endswith("/.default") for s in scopes):
            return _oauth_error(400, "invalid_scope",
                                f"AADSTS1002012: The provided value for scope {' '.join(scopes)} is not valid. "
                                "Client credential flows must have a scope value with /.default suffixed to the "
                                "resource identifier (application ID URI).", codes=[1002012])
        resources = {s[:-len("/.default")].rstrip("/").lower() for s in scopes}
        if len(resources) > 1:
            return _oauth_error(400, "invalid_scope",
                                f"AADSTS700022: The provided value for the input parameter scope is not valid "
                                f"because it contains more than one resource. Scope {' '.join(scopes)} is not "
                                "valid.", codes=[700022])
        resource = resources.pop()
        if tenant.lower() in META_TENANTS:
            tenant_id = app.tenant_id  # Entra guesses (graph-facts-2 §1.4); MSAL warns against it
        else:
            tenant_id = self.store.resolve_tenant(tenant)
        if not tenant_id:
            return _oauth_error(400, "invalid_request", "AADSTS50059: No tenant-identifying information found in "
                                                        "either the request or implied by any provided "
                                                        "credentials.", codes=[50059])
        if resource not in GRAPH_RESOURCES:
            return _oauth_error(400, "invalid_resource",
                                f"AADSTS500011: The resource principal named {resource} was not found in the "
                                f"tenant named {tenant}. This can happen if the application has not been installed "
                                "by the administrator of the tenant or consented to by any user in the tenant.",
                                codes=[500011])
        sp = self.store.service_principal(tenant_id, app.client_id)
        if sp is None:
            return _oauth_error(401, "invalid_client",
                                f"AADSTS7000229: The client application {app.client_id} is missing service "
                                f"principal in the tenant {tenant_id}. See instructions here: "
                                "https://go.microsoft.com/fwlink/?linkid=2225119", codes=[7000229])
        now = self.store.clock.now()
        life = self.store.settings.access_token_lifetime
        iat = int(now.timestamp())
        claims = {
            "aud": "https://graph.microsoft.com", "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": iat, "nbf": iat, "exp": iat + life, "app_displayname": app.display_name,
            "appid": app.client_id, "appidacr": "2" if by_certificate else "1",
            "idp": f"https://sts.windows.net/{tenant_id}/", "idtyp": "app",
            "oid": sp.id, "sub": sp.id,  # the service principal's object id: no user
            "tid": tenant_id, "ver": "1.0", "uti": secrets.token_urlsafe(16)}
        if sp.roles:  # "can be issued without a roles claim" when nothing was granted
            claims["roles"] = list(sp.roles)
        token = self._jwt(claims)
        self.store.access_tokens[token] = AccessToken(token, app.client_id, tenant_id, None, [".default"],
                                                      now + timedelta(seconds=life), roles=list(sp.roles),
                                                      service_principal_id=sp.id)
        return Response.plain_json({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life,
                                    "access_token": token})

    def _issue(self, app, oid: str, tenant_id: str, scopes: list[str], nonce: str | None,
               want_client_info: bool) -> Response:
        now = self.store.clock.now()
        user = self.store.mailboxes[oid]
        life = self.store.settings.access_token_lifetime
        resource_scopes = [s for s in scopes if s not in RESERVED_SCOPES]
        iat = int(now.timestamp())
        access = self._jwt({
            "aud": "https://graph.microsoft.com", "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": iat, "nbf": iat, "exp": iat + life, "app_displayname": app.display_name,
            "appid": app.client_id, "idtyp": "user", "name": user.display_name, "oid": oid,
            "scp": " ".join(normalize_scope(s) for s in resource_scopes), "tid": tenant_id,
            "upn": user.upn, "unique_name": user.upn, "ver": "1.0", "uti": secrets.token_urlsafe(16)})
        self.store.access_tokens[access] = AccessToken(access, app.client_id, tenant_id, oid, resource_scopes,
                                                       now + timedelta(seconds=life))
        body = {"token_type": "Bearer", "scope": " ".join(resource_scopes), "expires_in": life,
                "ext_expires_in": life, "access_token": access}
        if "offline_access" in scopes:
            rt = "1.A" + secrets.token_urlsafe(96)
            self.store.refresh_tokens[rt] = RefreshToken(rt, app.client_id, oid, tenant_id, scopes, now)
            body["refresh_token"] = rt
        if "openid" in scopes:
            claims = {
                "aud": app.client_id, "iss": self.issuer(tenant_id), "iat": iat, "nbf": iat, "exp": iat + life,
                "name": user.display_name, "oid": oid, "preferred_username": user.upn,
                "sub": base64.urlsafe_b64encode(hashlib.sha256(f"{oid}:{app.client_id}".encode()).digest())
                .decode().rstrip("="),
                "tid": tenant_id, "uti": secrets.token_urlsafe(16), "ver": "2.0",
            }
            if nonce:
                claims["nonce"] = nonce
            body["id_token"] = self._jwt(claims)
        if want_client_info:
            info = json.dumps({"uid": oid, "utid": tenant_id}).encode()
            body["client_info"] = base64.urlsafe_b64encode(info).decode().rstrip("=")
        return Response.plain_json(body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    # --- device code (ENTRA v2-oauth2-device-code.md; RFC 8628) ---------------------------------------
    def device_code(self, req: Request, tenant: str) -> Response:
        """`POST /{tenant}/oauth2/v2.0/devicecode`: a device code for a person to approve at /devicelogin."""
        form = req.form()
        client_id = form.get("client_id") or ""
        scopes = (form.get("scope") or "").split()
        with self.store.lock:
            app = self.store.apps.get(client_id)
            if app is None:
                return _oauth_error(400, "unauthorized_client",
                                    f"AADSTS700016: Application with identifier '{client_id}' was not found in "
                                    "the directory.", codes=[700016])
            if not scopes:
                return _oauth_error(400, "invalid_request", "AADSTS900144: The request body must contain the "
                                                            "following parameter: 'scope'.", codes=[900144])
            settings = self.store.settings
            user_code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(9))
            flow = DeviceCode(
                device_code="DAQABAAEAAA" + secrets.token_urlsafe(96), user_code=user_code,
                client_id=client_id, tenant=tenant, scopes=scopes,
                expires_at=self.store.clock.now() + timedelta(seconds=settings.device_code_lifetime),
                interval=settings.device_code_interval)
            self.store.device_codes[flow.device_code] = flow
        uri = f"{self.base_url}{DEVICE_LOGIN_PATH}"
        return Response.plain_json({
            "user_code": user_code, "device_code": flow.device_code, "verification_uri": uri,
            "expires_in": self.store.settings.device_code_lifetime, "interval": flow.interval,
            "message": f"To sign in, use a web browser to open the page {uri} and enter the code {user_code} "
                       "to authenticate."})

    def _grant_device_code(self, form: dict, req: Request) -> Response:
        """The client's poll. Pending → 400 authorization_pending (70016); polled again sooner than
        `interval` seconds → 400 slow_down and the interval grows by 5 s (RFC 8628 §3.5; Entra does not
        list it, MSAL honours it); past `expires_in` → 400 expired_token (70019)."""
        client_id, secret = form.get("client_id") or "", form.get("client_secret")
        with self.store.lock:
            app = self.store.apps.get(client_id)
            if app is None:
                return _oauth_error(400, "unauthorized_client",
                                    f"AADSTS700016: Application with identifier '{client_id}' was not found in "
                                    "the directory.", codes=[700016])
            if not app.public_client and not secret:
                return _oauth_error(401, "invalid_client",
                                    "AADSTS7000218: The request body must contain the following parameter: "
                                    "'client_assertion' or 'client_secret'.", codes=[7000218])
            if app.public_client and secret:
                return _oauth_error(401, "invalid_client",
                                    "AADSTS700025: Client is public so neither 'client_assertion' nor "
                                    "'client_secret' should be presented.", codes=[700025])
            if not app.public_client and not secrets.compare_digest(secret or "", app.client_secret):
                return _oauth_error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.",
                                    codes=[7000215])
            flow = self.store.device_codes.get(form.get("device_code") or form.get("code") or "")
            if flow is None or flow.client_id != client_id:
                return _oauth_error(400, "bad_verification_code",
                                    "AADSTS70000: The provided value for the input parameter 'device_code' is "
                                    "not valid.", codes=[70000])
            if flow.state == "redeemed":
                return _oauth_error(400, "invalid_grant", "AADSTS54005: OAuth2 Authorization code was already "
                                                          "redeemed, please retry with a new valid code.",
                                    codes=[54005])
            if self.store.clock.now() > flow.expires_at:
                return _oauth_error(400, "expired_token", "AADSTS70019: Verification code expired.",
                                    codes=[70019])
            if flow.state == "declined":
                return _oauth_error(400, "authorization_declined", "AADSTS70020: The user declined to "
                                                                   "authorize the request.", codes=[70020])
            now = time.monotonic()
            too_soon = flow.last_poll is not None and now - flow.last_poll < flow.interval - 0.5
            flow.last_poll = now
            if too_soon and flow.state == "pending":
                flow.interval += 5
                return _oauth_error(400, "slow_down", "AADSTS70016: OAuth 2.0 device flow error. Polling too "
                                                      f"fast: wait {flow.interval} seconds between requests.",
                                    codes=[70016])
            if flow.state == "pending":
                return _oauth_error(400, "authorization_pending", "AADSTS70016: OAuth 2.0 device flow error. "
                                                                  "Authorization is pending. Continue polling.",
                                    codes=[70016])
            flow.state = "redeemed"
            assert flow.oid is not None and flow.tenant_id is not None
            return self._issue(app, flow.oid, flow.tenant_id, flow.scopes, nonce=None,
                               want_client_info=form.get("client_info") == "1")

    def device_login(self, req: Request) -> Response:
        """The page a person opens (`verification_uri`): enter the code, then say who signs in and accept.
        Form fields: `otc` (the user code), `login` (the account's UPN), `consent` (accept | refuse)."""
        params = dict(req.query)
        if req.method == "POST":
            params.update(req.form())
        es = (params.get("ui_locales") or req.headers.get("Accept-Language") or "en").lower().startswith("es")
        entered = (params.get("otc") or "").strip().upper().replace("-", "")
        if not entered:
            return _device_page(es, "")
        with self.store.lock:
            now = self.store.clock.now()
            flow = next((f for f in self.store.device_codes.values() if f.user_code == entered), None)
            if flow is None or flow.state != "pending":
                return _device_page(es, "AADSTS70018: " + ("Código no válido." if es else
                                    "Invalid verification code entered."), status=400)
            if now > flow.expires_at:
                return _device_page(es, "AADSTS70019: " + ("El código expiró." if es else
                                    "Verification code expired."), status=400)
            app = self.store.apps[flow.client_id]
            decision = params.get("consent")
            if decision not in ("accept", "refuse"):
                return _device_consent_page(es, flow, app.display_name, params.get("login") or "")
            if decision == "refuse":
                flow.state = "declined"
                return _device_done_page(es, "declined", app.display_name)
            user = self.store.find_user(params.get("login") or "")
            if user is None:
                return _device_consent_page(es, flow, app.display_name, params.get("login") or "",
                                            error="AADSTS50034: " + ("La cuenta no existe." if es else
                                                                     "The user account does not exist."))
            if flow.tenant.lower() not in META_TENANTS and user.tenant_id != flow.tenant:
                return _device_consent_page(es, flow, app.display_name, user.upn,
                                            error=f"AADSTS50020: User account '{user.upn}' does not exist in "
                                                  f"tenant '{flow.tenant}'.")
            flow.state, flow.oid, flow.tenant_id = "approved", user.oid, user.tenant_id
            return _device_done_page(es, "approved", app.display_name)

    def _jwt(self, claims: dict) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})


def _oauth_error(status: int, error: str, description: str, codes: list[int] | None = None,
                 suberror: str | None = None) -> Response:
    trace = str(uuid.uuid4())
    corr = str(uuid.uuid4())
    from datetime import UTC, datetime

    ts = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": f"{description} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}",
        "error_codes": codes or [],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
    }
    if codes:
        body["error_uri"] = f"https://login.microsoftonline.com/error?code={codes[0]}"
    if suberror:
        body["suberror"] = suberror
    return Response.plain_json(body, status)


def _device_page(es: bool, error: str, status: int = 200) -> Response:
    title = "Escribir código" if es else "Enter code"
    hint = ("Escriba el código que aparece en su aplicación o dispositivo." if es else
            "Enter the code displayed on your app or device.")
    err = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return Response.html(f"""<!doctype html><html lang="{'es' if es else 'en'}"><head><meta charset="utf-8">
<title>{title}</title></head><body><h1>{title}</h1><p>{hint}</p>{err}
<form method="post" action="{DEVICE_LOGIN_PATH}"><input name="otc" autocomplete="off">
<button type="submit">{"Siguiente" if es else "Next"}</button></form></body></html>""", status=status)


def _device_consent_page(es: bool, flow: DeviceCode, app_name: str, login: str, error: str = "") -> Response:
    asks = (f"¿Está intentando iniciar sesión en <b>{html.escape(app_name)}</b>?" if es else
            f"Are you trying to sign in to <b>{html.escape(app_name)}</b>?")
    scopes = "".join(f"<li>{html.escape(s)}</li>" for s in flow.scopes if s not in RESERVED_SCOPES)
    err = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return Response.html(f"""<!doctype html><html lang="{'es' if es else 'en'}"><head><meta charset="utf-8">
<title>{"Iniciar sesión" if es else "Sign in"}</title></head><body><p>{asks}</p><ul>{scopes}</ul>{err}
<form method="post" action="{DEVICE_LOGIN_PATH}"><input type="hidden" name="otc" value="{flow.user_code}">
<label>{"Cuenta" if es else "Account"} <input name="login" value="{html.escape(login)}"></label>
<button type="submit" name="consent" value="accept">{"Continuar" if es else "Continue"}</button>
<button type="submit" name="consent" value="refuse">{"Cancelar" if es else "Cancel"}</button>
</form></body></html>""", status=400 if error else 200)


def _device_done_page(es: bool, outcome: str, app_name: str) -> Response:
    name = html.escape(app_name)
    if outcome == "approved":
        text = (f"Ha iniciado sesión en la aplicación {name} en su dispositivo. Ya puede cerrar esta ventana."
                if es else f"You have signed in to the {name} application on your device. You may now close "
                           "this window.")
    else:
        text = "Se canceló el inicio de sesión." if es else "The sign-in was cancelled."
    return Response.html(f"""<!doctype html><html><head><meta charset="utf-8"><title>{name}</title></head>
<body><p id="outcome" data-outcome="{outcome}">{text}</p></body></html>""")


def _hidden(params: dict, skip: tuple[str, ...]) -> str:
    return "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v or "")}">'
                   for k, v in params.items() if k not in skip)


def _admin_sign_in_page(es: bool, req: Request, base_url: str, params: dict, app_name: str, login: str,
                        error: str = "") -> Response:
    """Who is signing in (the admin consent endpoint always asks; `login_hint` or `next_user` skip it)."""
    title = "Iniciar sesión" if es else "Sign in"
    err = f'<p class="error">{html.escape(error)}</p>' if error else ""
    action = html.escape(f"{base_url}{req.path}")
    return Response.html(f"""<!doctype html><html lang="{'es' if es else 'en'}"><head><meta charset="utf-8">
<title>{title}</title></head><body><h1>{title}</h1><p>{html.escape(app_name)}</p>{err}
<form method="post" action="{action}">{_hidden(params, ("login", "consent"))}
<label>{"Cuenta" if es else "Account"} <input name="login" value="{html.escape(login)}"></label>
<button type="submit">{"Siguiente" if es else "Next"}</button>
</form></body></html>""", status=400 if error else 200)


def _admin_consent_page(es: bool, req: Request, base_url: str, params: dict, app, user, scopes) -> Response:
    """Permissions requested, "Accept for your organization": Accept / Cancel. `data-person-consent` says
    which button the registered user presses (their `consent`: accept | refuse), for test drivers."""
    title = "Permisos solicitados" if es else "Permissions requested"
    asks = ("solicita permiso para tu organización:" if es else "wants permission for your organization:")
    roles = "".join(f"<li>{html.escape(r)}</li>" for r in app.application_permissions)
    requested = "".join(f"<li>{html.escape(s)}</li>" for s in scopes)
    action = html.escape(f"{base_url}{req.path}")
    return Response.html(f"""<!doctype html><html lang="{'es' if es else 'en'}"><head><meta charset="utf-8">
<title>{title}</title></head><body><h1>{title}</h1>
<p><b>{html.escape(app.display_name)}</b> {asks}</p><ul>{roles}</ul><ul class="scope">{requested}</ul>
<p id="account" data-person-consent="{html.escape(user.consent)}">{html.escape(user.upn)}</p>
<form method="post" action="{action}">{_hidden(params, ("login", "consent"))}
<input type="hidden" name="login" value="{html.escape(user.upn)}">
<button type="submit" name="consent" value="accept">{"Aceptar" if es else "Accept"}</button>
<button type="submit" name="consent" value="refuse">{"Cancelar" if es else "Cancel"}</button>
</form></body></html>""")


def _error_page(message: str) -> Response:
    return Response.html(f"<!doctype html><html><body><h1>Sign in error</h1><p>{html.escape(message)}</p>"
                         "</body></html>", status=400)


def _auth_response(redirect_uri: str, mode: str, params: dict) -> Response:
    params = {k: v for k, v in params.items() if v is not None}
    if mode == "form_post":
        fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items())
        return Response.html(
            f'<html><body onload="document.forms[0].submit()"><form method="POST" '
            f'action="{html.escape(redirect_uri)}">{fields}</form></body></html>')
    parts = urlsplit(redirect_uri)
    if mode == "fragment":
        return Response.redirect(urlunsplit(parts._replace(fragment=urlencode(params))))
    query = (parts.query + "&" if parts.query else "") + urlencode(params)
    return Response.redirect(urlunsplit(parts._replace(query=query)))
