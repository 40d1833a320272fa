"""azd postdeploy hook (azure.yaml): is the deployed app up, did its settings validate, and how to
run the go-live check against it. Standard library only: azd runs it with the machine's python3.

The app validates every setting when it loads (function_app.py: settings.get()); a host whose
settings fail serves no function at all. So:
1. GET /api/health answers 200 {"status": "ok"}: the app loaded (settings valid) and reaches storage;
2. an unsigned POST /api/crm/events answers 401 `invalid_signature`: the CRM-facing routes are served
   and the signature check (CRM_SHARED_SECRET) is in force.
Exit code 1 when either fails, with the answer seen; azd then reports the deployment as failed."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

WAIT_SECONDS = int(os.environ.get("POSTDEPLOY_WAIT_SECONDS", "300"))  # a Flex app's first start


def fetch(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method,  # noqa: S310 - our own https URL
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        return 0, str(error)


def main() -> int:
    base = (os.environ.get("PUBLIC_BASE_URL") or "").rstrip("/")
    if not base:
        print("postdeploy: PUBLIC_BASE_URL is not set (azd sets it from infra/main.bicep's outputs)")
        return 1
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status, text = fetch("GET", f"{base}/api/health")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(5)  # the app is still starting; a real wait on a remote host, not a test
    try:
        healthy = status == 200 and json.loads(text).get("status") == "ok"
    except ValueError:
        healthy = False
    print(f"postdeploy: GET {base}/api/health -> {status} {text[:200]}")
    if not healthy:
        print("postdeploy: FAILED - the app is not healthy. If no function answers, a setting failed to "
              "validate at start: its name is in Application Insights (traces of the host start).")
        return 1
    status, text = fetch("POST", f"{base}/api/crm/events", b"{}")
    try:
        error = json.loads(text).get("error")
    except ValueError:
        error = None
    print(f"postdeploy: unsigned POST {base}/api/crm/events -> {status} {error}")
    if status != 401 or error != "invalid_signature":
        print("postdeploy: FAILED - the CRM contract is not served with its signature check")
        return 1
    print("postdeploy: OK - settings validated, storage reachable, CRM contract signed.")
    print("Next, the go-live check against a test user of this tenant (docs/go-live.md):")
    print(f"  LIVE_SERVICE_URL={base} LIVE_CRM_SHARED_SECRET=<CRM_SHARED_SECRET> \\")
    print("  LIVE_CLIENT_ID=<public client app id> LIVE_TEST_USER=<test user UPN> \\")
    print("  [LIVE_TENANT=<tenant id>] [LIVE_CRM_CALLBACK_SECRET=<CRM_CALLBACK_SECRET> "
          "LIVE_CALLBACK_LISTEN=0.0.0.0:8765] make test-live")
    return 0


if __name__ == "__main__":
    sys.exit(main())
