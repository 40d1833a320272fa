from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.rules.crm_signature import SignatureError, sign, verify

SECRET = "s3cret-Ω"
NOW = 1_760_000_000
PATH = "/api/crm/events?x=1&y=%2F"
BODY = b'{"id":"evt-1","data":{"subject":"Caf\xc3\xa9"}}'
RID = "req_0123456789abcdef"


def reason(header: object, *, secrets: object = SECRET, method: str = "POST", path: str = PATH,
           body: bytes = BODY, now: float = NOW, request_id: object = RID) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(secrets, header, method, path, body, now, request_id)  # type: ignore[arg-type]
    return caught.value.reason


def test_header_format_matches_the_contract() -> None:
    header = sign(SECRET, "post", PATH, BODY, NOW + 0.9, RID)
    signed = f"v2\n{NOW}\nPOST\n{PATH}\n{RID}\n{hashlib.sha256(BODY).hexdigest()}".encode()
    expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v2={expected}"


def test_good_signature_within_tolerance() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW, RID)
    for now in (NOW, NOW + 300, NOW - 300):
        assert verify(SECRET, header, "POST", PATH, BODY, now, RID) == NOW
    verify(SECRET.encode(), header, "post", PATH, BODY, NOW, RID)


def test_stale_and_future() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW, RID)
    assert reason(header, now=NOW + 301) == "stale"
    assert reason(header, now=NOW - 301) == "future"


@pytest.mark.parametrize(("change", "value"), [
    ("body", BODY + b" "), ("body", b""), ("path", "/api/crm/events?x=1&y=/"), ("path", "/api/crm/events"),
    ("method", "PUT"), ("secrets", "other"), ("request_id", RID + "x"),
])
def test_tampering_is_a_mismatch(change: str, value: object) -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW, RID)
    assert reason(header, **{change: value}) == "mismatch"


def test_tampered_timestamp_is_a_mismatch() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW, RID)
    assert reason(header.replace(f"t={NOW}", f"t={NOW + 1}")) == "mismatch"


def test_the_ambiguous_pair_of_v1_no_longer_verifies() -> None:
    """v1 signed "<t>.<METHOD>.<path>.<body>": path P + body ".X" and path "P." + body "X" were one string."""
    header = sign(SECRET, "POST", "/api/crm/events", b".X", NOW, RID)
    assert reason(header, path="/api/crm/events.", body=b"X") == "mismatch"
    v1 = hmac.new(SECRET.encode(), f"{NOW}.POST./api/crm/events.".encode() + b".X", hashlib.sha256).hexdigest()
    assert reason(f"t={NOW},v1={v1}", path="/api/crm/events", body=b".X") == "malformed"  # v1 is gone


GOOD = "0" * 64


@pytest.mark.parametrize("header", [
    "", None, 123, b"t=1,v2=00",
])
def test_missing_header(header: object) -> None:
    assert reason(header) == "missing"


@pytest.mark.parametrize("request_id", ["", None, 7])
def test_missing_request_id(request_id: object) -> None:
    assert reason(sign(SECRET, "POST", PATH, BODY, NOW, RID), request_id=request_id) == "missing its X-Request-Id"


@pytest.mark.parametrize("request_id", ["short", "x" * 129, "has space 0123456789", "a.b.c.d.e.f.g.h.i", "é" * 20])
def test_malformed_request_ids_are_bad_signatures(request_id: str) -> None:
    assert reason(sign(SECRET, "POST", PATH, BODY, NOW, RID), request_id=request_id) == "malformed"
    with pytest.raises(ValueError):
        sign(SECRET, "POST", PATH, BODY, NOW, request_id)


@pytest.mark.parametrize("header", [
    "garbage", f"v2={GOOD}", f"t={NOW}", f"t={NOW},v2=xyz", f"t={NOW},v2={'0' * 63}",
    f"t=-{NOW},v2={GOOD}", f"t={NOW}.5,v2={GOOD}", f"t=,v2={GOOD}", f"t={NOW},t={NOW},v2={GOOD}",
    f"t=١٢٣,v2={GOOD}", f"t={'9' * 40},v2={GOOD}", f"t={NOW};v2={GOOD}", f"t={NOW},v2={GOOD}," + "x" * 3000,
    f"t={NOW},,v2={GOOD}", f"t={NOW},v1={GOOD}",
])
def test_malformed_headers_are_bad_signatures(header: str) -> None:
    assert reason(header) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=140))
def test_no_header_raises_anything_but_signature_error(header: str, request_id: str) -> None:
    with pytest.raises(SignatureError):
        verify(SECRET, header, "POST", PATH, BODY, NOW, request_id)


def test_rotation_accepts_any_configured_secret() -> None:
    old, new = "old-secret", "new-secret"
    verify([new, old], sign(old, "POST", PATH, BODY, NOW, RID), "POST", PATH, BODY, NOW, RID)
    verify([new, old], sign(new, "POST", PATH, BODY, NOW, RID), "POST", PATH, BODY, NOW, RID)
    assert reason(sign("third", "POST", PATH, BODY, NOW, RID), secrets=[new, old]) == "mismatch"


def test_a_sender_may_send_one_v2_per_secret_and_unknown_keys_are_ignored() -> None:
    a = sign("a", "POST", PATH, BODY, NOW, RID)
    b = sign("b", "POST", PATH, BODY, NOW, RID).split(",")[1]
    verify("b", f"{a}, {b}, v3=whatever", "POST", PATH, BODY, NOW, RID)
    verify("b", f"{b.upper().replace('V2', 'v2')},t={NOW}", "POST", PATH, BODY, NOW, RID)


def test_no_secret_is_a_configuration_error() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW, RID)
    for secrets in ("", [], ["", b""]):
        with pytest.raises(ValueError):
            verify(secrets, header, "POST", PATH, BODY, NOW, RID)
    with pytest.raises(ValueError):
        sign("", "POST", PATH, BODY, NOW, RID)
