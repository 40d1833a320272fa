"""Settings for running the stack on a developer machine.

Secrets are generated once into ``.local/secrets.json`` (git-ignored) so that every local run and
test uses real, random values and none is ever committed."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRETS_FILE = ROOT / ".local" / "secrets.json"


def new_secrets() -> dict[str, str]:
    return {
        "CRM_SHARED_SECRET": secrets.token_hex(32),
        "CRM_CALLBACK_SECRET": secrets.token_hex(32),
        "TOKEN_ENCRYPTION_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "MS_CLIENT_ID": str(uuid.uuid4()),
        "MS_CLIENT_SECRET": secrets.token_urlsafe(32),
    }


def local_secrets(path: Path = SECRETS_FILE) -> dict[str, str]:
    """The machine's local secrets, created on first use; a secret added since is generated then."""
    stored = json.loads(path.read_text()) if path.exists() else {}
    missing = {k: v for k, v in new_secrets().items() if k not in stored}
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**stored, **missing}, indent=2))
        path.chmod(0o600)
    return {**stored, **missing}


def service_environment(
    *,
    storage_connection_string: str,
    host_port: int,
    crm_callback_url: str,
    secrets_: dict[str, str],
    authority_host: str | None = None,
    graph_api_base: str | None = None,
    ca_bundle: str | None = None,
    return_origins: str | None = None,
) -> dict[str, str]:
    """Every setting the service reads, for a local dev host (see shared/rules/settings.py)."""
    base = f"http://127.0.0.1:{host_port}"
    env = {
        "AzureWebJobsStorage": storage_connection_string,
        "PUBLIC_BASE_URL": base,
        "CRM_CALLBACK_URL": crm_callback_url,
        "CRM_RETURN_ORIGINS": return_origins or f"{base},http://localhost:{host_port}",
        "MS_TENANT": "common",
        **secrets_,
    }
    if authority_host:
        env["MS_AUTHORITY_HOST"] = authority_host
    if graph_api_base:
        env["GRAPH_API_BASE"] = graph_api_base
    if ca_bundle:
        # requests lets REQUESTS_CA_BUNDLE override Session.verify: point it at the emulator's CA.
        env["REQUESTS_CA_BUNDLE"] = ca_bundle
    return env
