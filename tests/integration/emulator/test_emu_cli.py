"""`python -m local.emulator` prints one JSON line once ready and serves HTTPS with its own CA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def test_module_prints_ready_line_and_serves():
    proc = subprocess.Popen([sys.executable, "-m", "local.emulator", "--port", "0", "--client-id", "cli-app",
                             "--client-secret", "x", "--redirect-uri", "http://localhost/cb",
                             "--user", "cli@contoso.example", "--time-zone", "Europe/Madrid",
                             "--admin", "it@contoso.example"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert set(info) >= {"authority_host", "graph_base", "ca_path", "control_url", "port"}
        assert info["authority_host"].startswith("https://127.0.0.1:")
        assert info["graph_base"] == info["authority_host"] + "/v1.0"
        cfg = requests.get(info["authority_host"] + "/common/v2.0/.well-known/openid-configuration",
                           verify=info["ca_path"], timeout=10)
        assert cfg.status_code == 200
        users = requests.get(info["control_url"] + "/users", verify=info["ca_path"], timeout=10).json()["value"]
        assert users[0]["time_zone"] == "Romance Standard Time"  # mailboxSettings speak Windows names
        assert [(u["upn"], u["is_admin"]) for u in users] == [("cli@contoso.example", False),
                                                               ("it@contoso.example", True)]
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(info["graph_base"] + "/me", verify=True, timeout=10)  # untrusted without its CA
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_register_local_app_for_the_dev_host(emu, ctl):
    from local.emulator.control import register_local_app

    secrets = {"MS_CLIENT_ID": "dev-app", "MS_CLIENT_SECRET": "dev-secret"}
    settings = register_local_app(emu.describe(), secrets, redirect_uri="http://127.0.0.1:7071/api/auth/callback")
    assert settings == {"authority_host": emu.authority_host, "graph_api_base": emu.graph_base,
                        "ca_bundle": emu.ca_path}
    apps = {a["client_id"]: a for a in ctl._call("GET", "/apps")["value"]}
    assert apps["dev-app"]["client_secret"] == "dev-secret"
    assert "http://localhost:7071/api/auth/callback" in apps["dev-app"]["redirect_uris"]
