"""Settings are read once, and any missing or malformed one is named in a single clear message."""

import base64

import pytest

from shared.rules.settings import SettingsError, load

KEY = base64.b64encode(bytes(32)).decode()
S1, S2 = "9f2c4e7a1b3d5f6e8a0c2e4f6a8b0d1e", "Zq4-Tm8_wX2yB6nR0vK3pL7sD1fH5gJ9"
CALLBACK = "c0ffee5e1f2a3b4c5d6e7f8091a2b3c4d5e6f708"
VALID = {
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=x;",
    "MS_CLIENT_ID": "client",
    "MS_CLIENT_SECRET": "secret",
    "PUBLIC_BASE_URL": "https://sync.example.com/",
    "CRM_SHARED_SECRET": f"{S1}, {S2}",
    "CRM_CALLBACK_SECRET": CALLBACK,
    "CRM_CALLBACK_URL": "https://crm.example.com/hooks/calendar",
    "CRM_RETURN_ORIGINS": "https://crm.example.com,https://App.Example.com:8443",
    "TOKEN_ENCRYPTION_KEYS": f"new:{KEY},old:{base64.b64encode(b'1' * 32).decode()}",
}


def test_valid_settings_with_defaults() -> None:
    settings = load(VALID)

    assert settings.storage.connection_string == VALID["AzureWebJobsStorage"]
    assert settings.ms_tenant == "common"
    assert settings.authority == "https://login.microsoftonline.com/common"
    assert settings.authority_is_microsoft
    assert settings.graph_api_base == "https://graph.microsoft.com/v1.0"
    assert settings.redirect_uri == "https://sync.example.com/api/auth/callback"
    assert settings.crm_shared_secrets == (S1, S2)
    assert settings.crm_callback_secrets == (CALLBACK,)
    assert settings.crm_return_origins == {"https://crm.example.com", "https://app.example.com:8443"}
    assert [kid for kid, _ in settings.token_encryption_keys] == ["new", "old"]
    assert settings.sync_window_past_days == 30
    assert settings.completed_activities == "keep"


def test_identity_based_storage_needs_no_key() -> None:
    env = {k: v for k, v in VALID.items() if k != "AzureWebJobsStorage"}
    env |= {
        "AzureWebJobsStorage__accountName": "stsync",
        "AzureWebJobsStorage__clientId": "uami-client-id",
        "AzureWebJobsStorage__credential": "managedidentity",
    }
    storage = load(env).storage

    assert storage.connection_string is None
    assert storage.queue_url == "https://stsync.queue.core.windows.net"
    assert storage.table_url == "https://stsync.table.core.windows.net"
    assert storage.managed_identity_client_id == "uami-client-id"


def test_an_emulator_authority_turns_instance_discovery_off() -> None:
    settings = load(VALID | {"MS_AUTHORITY_HOST": "https://127.0.0.1:8443", "MS_TENANT": "contoso"})
    assert settings.authority == "https://127.0.0.1:8443/contoso"
    assert not settings.authority_is_microsoft


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("MS_CLIENT_ID", None, "MS_CLIENT_ID is missing"),
        ("CRM_SHARED_SECRET", " ", "CRM_SHARED_SECRET is missing"),
        ("CRM_CALLBACK_SECRET", None, "CRM_CALLBACK_SECRET is missing"),
        ("CRM_SHARED_SECRET", "s1", "CRM_SHARED_SECRET is too weak"),
        ("CRM_SHARED_SECRET", f"{S1},short", r"CRM_SHARED_SECRET is too weak \(item 2\)"),
        ("CRM_SHARED_SECRET", "a" * 64, "CRM_SHARED_SECRET is too weak"),
        ("CRM_SHARED_SECRET", "abcdefgh" * 4, "CRM_SHARED_SECRET is too weak"),
        ("CRM_CALLBACK_SECRET", "password" * 4, "CRM_CALLBACK_SECRET is too weak"),
        ("CRM_CALLBACK_SECRET", f"{CALLBACK},{S2}", "CRM_CALLBACK_SECRET is malformed: it must differ"),
        ("TOKEN_ENCRYPTION_KEYS", f"k.1:{KEY}", "TOKEN_ENCRYPTION_KEYS is malformed"),
        ("AzureWebJobsStorage", None, "AzureWebJobsStorage is missing"),
        ("AzureWebJobsStorage", "nonsense", "AzureWebJobsStorage is malformed"),
        ("PUBLIC_BASE_URL", "sync.example.com", "PUBLIC_BASE_URL is malformed"),
        ("PUBLIC_BASE_URL", "http://sync.example.com", "must use https"),
        ("MS_AUTHORITY_HOST", "http://127.0.0.1:1", "MS_AUTHORITY_HOST is malformed"),
        ("CRM_RETURN_ORIGINS", "https://crm.example.com/path", "CRM_RETURN_ORIGINS is malformed"),
        ("TOKEN_ENCRYPTION_KEYS", "k1:c2hvcnQ=", "TOKEN_ENCRYPTION_KEYS is malformed"),
        ("TOKEN_ENCRYPTION_KEYS", f"k1:{KEY},k1:{KEY}", "unique key ids"),
        ("TOKEN_ENCRYPTION_KEYS", "not base64!", "TOKEN_ENCRYPTION_KEYS is malformed"),
        ("SYNC_WINDOW_PAST_DAYS", "thirty", "SYNC_WINDOW_PAST_DAYS is malformed"),
        ("SYNC_WINDOW_PAST_DAYS", "-1", "outside 0..1825"),
        ("COMPLETED_ACTIVITIES", "archive", "COMPLETED_ACTIVITIES is malformed"),
    ],
)
def test_each_bad_setting_is_named(name: str, value: str | None, says: str) -> None:
    env = dict(VALID)
    if value is None:
        env.pop(name)
    else:
        env[name] = value

    with pytest.raises(SettingsError, match=says):
        load(env)


@pytest.mark.parametrize(
    "name",
    ["MS_CLIENT_SECRET", "CRM_SHARED_SECRET", "CRM_CALLBACK_SECRET", "TOKEN_ENCRYPTION_KEYS", "MS_CLIENT_ID",
     "SYNC_WINDOW_PAST_DAYS",
     "AzureWebJobsStorage"],
)
def test_an_unresolved_key_vault_reference_is_refused_not_used(name: str) -> None:
    # When App Service cannot resolve a reference it passes the reference text as the value; used as
    # the CRM HMAC key it would start the app with the wrong secret.
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-sync.vault.azure.net/secrets/crm-shared-secret)"

    with pytest.raises(SettingsError, match=f"{name} is an unresolved Key Vault reference") as refused:
        load(VALID | {name: reference})
    assert "kv-sync" not in str(refused.value)


def test_generated_secrets_are_strong_enough() -> None:
    import secrets

    for _ in range(200):
        load(VALID | {"CRM_SHARED_SECRET": secrets.token_hex(16), "CRM_CALLBACK_SECRET": secrets.token_urlsafe(24)})
