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


def reason(header: object, *, secrets: object = SECRET, method: str = "POST", path: str = PATH,
           body: bytes = BODY, now: float = NOW) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(secrets, header, method, path, body, now)  # type: ignore[arg-type]
    return caught.value.reason


def test_header_format_matches_the_contract() -> None:
    header = sign(SECRET, "post", PATH, BODY, NOW + 0.9)
    expected = hmac.new(SECRET.encode(), f"{NOW}.POST.{PATH}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_good_signature_within_tolerance() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW)
    for now in (NOW, NOW + 300, NOW - 300):
        verify(SECRET, header, "POST", PATH, BODY, now)
    verify(SECRET.encode(), header, "post", PATH, BODY, NOW)


def test_stale_and_future() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW)
    assert reason(header, now=NOW + 301) == "stale"
    assert reason(header, now=NOW - 301) == "future"


@pytest.mark.parametrize(("change", "value"), [
    ("body", BODY + b" "), ("body", b""), ("path", "/api/crm/events?x=1&y=/"), ("path", "/api/crm/events"),
    ("method", "PUT"), ("secrets", "other"),
])
def test_tampering_is_a_mismatch(change: str, value: object) -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW)
    assert reason(header, **{change: value}) == "mismatch"


def test_tampered_timestamp_is_a_mismatch() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW)
    assert reason(header.replace(f"t={NOW}", f"t={NOW + 1}")) == "mismatch"


GOOD_V1 = "0" * 64


@pytest.mark.parametrize("header", [
    "", None, 123, b"t=1,v1=00",
])
def test_missing_header(header: object) -> None:
    assert reason(header) == "missing"


@pytest.mark.parametrize("header", [
    "garbage", f"v1={GOOD_V1}", f"t={NOW}", f"t={NOW},v1=xyz", f"t={NOW},v1={'0' * 63}",
    f"t=-{NOW},v1={GOOD_V1}", f"t={NOW}.5,v1={GOOD_V1}", f"t=,v1={GOOD_V1}", f"t={NOW},t={NOW},v1={GOOD_V1}",
    f"t=١٢٣,v1={GOOD_V1}", f"t={'9' * 40},v1={GOOD_V1}", f"t={NOW};v1={GOOD_V1}", f"t={NOW},v1={GOOD_V1}," + "x" * 3000,
    f"t={NOW},,v1={GOOD_V1}",
])
def test_malformed_headers_are_bad_signatures(header: str) -> None:
    assert reason(header) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_header_raises_anything_but_signature_error(header: str) -> None:
    with pytest.raises(SignatureError):
        verify(SECRET, header, "POST", PATH, BODY, NOW)


def test_rotation_accepts_any_configured_secret() -> None:
    old, new = "old-secret", "new-secret"
    verify([new, old], sign(old, "POST", PATH, BODY, NOW), "POST", PATH, BODY, NOW)
    verify([new, old], sign(new, "POST", PATH, BODY, NOW), "POST", PATH, BODY, NOW)
    assert reason(sign("third", "POST", PATH, BODY, NOW), secrets=[new, old]) == "mismatch"


def test_a_sender_may_send_one_v1_per_secret_and_unknown_keys_are_ignored() -> None:
    a = sign("a", "POST", PATH, BODY, NOW)
    b = sign("b", "POST", PATH, BODY, NOW).split(",")[1]
    verify("b", f"{a}, {b}, v2=whatever", "POST", PATH, BODY, NOW)
    verify("b", f"{b.upper().replace('V1', 'v1')},t={NOW}", "POST", PATH, BODY, NOW)


def test_no_secret_is_a_configuration_error() -> None:
    header = sign(SECRET, "POST", PATH, BODY, NOW)
    for secrets in ("", [], ["", b""]):
        with pytest.raises(ValueError):
            verify(secrets, header, "POST", PATH, BODY, NOW)
    with pytest.raises(ValueError):
        sign("", "POST", PATH, BODY, NOW)
