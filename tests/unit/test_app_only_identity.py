"""App-only tokens (issue 19): the certificate credential, the per-tenant MSAL app and how MSAL's
refusals map into the error tree. MSAL itself is replaced by a fake app here; the e2e tests use the
real MSAL against the emulator."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.outlook.identity import Identity, certificate_credential
from shared.rules.errors import OrganizationConsentRequired, PermanentError, TransientError
from shared.rules.settings import SettingsError, load
from tests.unit.test_settings import VALID

TID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def pem_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm-outlook-sync")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return key_pem + cert_pem, cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303


def test_the_certificate_becomes_msal_s_key_and_sha1_thumbprint() -> None:
    pem, sha1 = pem_pair()
    credential = certificate_credential(pem)
    assert credential["thumbprint"].lower() == sha1
    assert credential["private_key"].startswith("-----BEGIN PRIVATE KEY-----")


def test_a_broken_pem_is_refused_without_quoting_it() -> None:
    with pytest.raises(PermanentError) as refused:
        certificate_credential("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    assert "c2VjcmV0" not in str(refused.value)


def test_a_pem_setting_without_the_certificate_stops_the_start_without_quoting_the_key() -> None:
    pem, _ = pem_pair()
    key_only = pem.split("-----BEGIN CERTIFICATE-----")[0]
    with pytest.raises(SettingsError) as refused:
        load({**VALID, "MS_CLIENT_CERTIFICATE": key_only})
    assert "MS_CLIENT_CERTIFICATE" in str(refused.value) and key_only[40:80] not in str(refused.value)
    assert load({**VALID, "MS_CLIENT_CERTIFICATE": pem}).ms_client_certificate == pem.strip()


class FakeApp:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]:
        self.asked.append(scopes)
        return self.answers.pop(0)


def identity_with(monkeypatch: pytest.MonkeyPatch, answers: list[dict[str, Any]]) -> tuple[Identity, list[Any]]:
    built: list[Any] = []

    class Msal:
        @staticmethod
        def ConfidentialClientApplication(client_id: str, **kwargs: Any) -> FakeApp:  # noqa: N802 - MSAL's name
            built.append(kwargs)
            return FakeApp(answers)

    import sys

    monkeypatch.setitem(sys.modules, "msal", Msal)
    return Identity(load(VALID), storage=None), built  # type: ignore[arg-type]


def test_one_app_per_tenant_with_the_tenant_authority_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    identity, built = identity_with(monkeypatch, [{"access_token": "t1"}, {"access_token": "t2"}])
    assert identity.app_token(TID) == "t1"
    assert identity.app_token(TID.upper()) == "t2"
    assert len(built) == 1  # built once, reused (MSAL's cache keeps the token)
    assert built[0]["authority"] == f"https://login.microsoftonline.com/{TID}"
    assert built[0]["client_credential"] == "secret"  # no certificate: the client secret


@pytest.mark.parametrize("tenant", ["common", "organizations", "contoso.com", ""])
def test_never_a_multi_tenant_alias_or_a_name(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    identity, built = identity_with(monkeypatch, [])
    with pytest.raises(PermanentError):
        identity.app_token(tenant)
    assert built == []


def test_a_tenant_without_the_app_s_service_principal_means_consent_required(monkeypatch: pytest.MonkeyPatch) -> None:
    refusal = {"error": "invalid_client", "error_description": "AADSTS7000229: missing service principal", "error_codes": [7000229]}
    identity, _ = identity_with(monkeypatch, [refusal])
    with pytest.raises(OrganizationConsentRequired) as refused:
        identity.app_token(TID)
    assert refused.value.code == "organization_consent_required"


def test_our_own_bad_credential_is_not_the_organisation_s_doing(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret", "error_codes": [7000215]}
    identity, _ = identity_with(monkeypatch, [bad, {"error": "temporarily_unavailable"}])
    with pytest.raises(PermanentError) as refused:
        identity.app_token(TID)
    assert not isinstance(refused.value, OrganizationConsentRequired)
    with pytest.raises(TransientError):
        identity.app_token(TID)


def test_force_refresh_builds_a_fresh_app_so_the_cached_token_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    identity, built = identity_with(monkeypatch, [{"access_token": "t1"}, {"access_token": "t2"}])
    identity.app_token(TID)
    identity.app_token(TID, force_refresh=True)
    assert len(built) == 2


def test_the_certificate_is_preferred_to_the_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    pem, sha1 = pem_pair()
    path = tmp_path / "app.pem"
    path.write_text(pem)
    identity, built = identity_with(monkeypatch, [{"access_token": "t"}])
    identity.settings = load({**VALID, "MS_CLIENT_CERTIFICATE": str(path)})
    identity.app_token(TID)
    assert built[0]["client_credential"]["thumbprint"].lower() == sha1


def test_the_admin_consent_url_is_v2_for_organizations_with_default_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    identity, _ = identity_with(monkeypatch, [])
    url = urlsplit(identity.admin_consent_url("st-1"))
    assert url.path == "/organizations/v2.0/adminconsent"
    query = parse_qs(url.query)
    assert query["scope"] == ["https://graph.microsoft.com/.default"]
    assert query["redirect_uri"] == ["https://sync.example.com/api/auth/admin-callback"]
    assert query["state"] == ["st-1"] and query["client_id"] == ["client"]


def test_a_tenant_that_does_not_exist_means_consent_required_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    identity, _ = identity_with(monkeypatch, [])

    def unknown_tenant(*args: Any, **kwargs: Any) -> None:
        try:
            raise ValueError('OIDC Discovery failed. HTTP status: 400, Error: {"error": "invalid_tenant", "error_codes": [90002]}')
        except ValueError:
            raise ValueError("Unable to get authority configuration for https://login.example/tid") from None

    import sys

    monkeypatch.setattr(sys.modules["msal"], "ConfidentialClientApplication", unknown_tenant)
    with pytest.raises(OrganizationConsentRequired):
        identity.app_token(TID)
