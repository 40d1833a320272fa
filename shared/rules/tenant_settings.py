"""Per-tenant sync settings (design §3 ``GET``/``PUT /api/tenants/{tenant}/settings``), decided here.

One document per tenant. It holds ``field_directions``: per field group, whether an Outlook
edit of it is reported to the CRM (``two_way``) or not (``crm_to_outlook``: the edit stays in
Outlook until the CRM's next change of the activity overwrites it). Defaults keep the contract
as it was before per-field directions existed: ``times`` two-way, everything else
``crm_to_outlook``.

``PUT`` replaces the whole document: a key left out takes its default, so a CRM reads the document
(``GET``), changes what it wants and sends it back. A key this version does not know is a 400
naming it, never silently dropped.

Issue 17 added ``capture_meetings`` (``off`` | ``external`` | ``all``, default ``off``),
``capture_body`` (default false) and ``internal_domains`` (default none), read by
``shared.rules.capture_plan``.

Growing the document (issue 18: ``dedicated_calendar_name``): add a field to ``TenantSettings`` with its default, a
parser to ``_PARSERS`` and its JSON to ``as_json``/``from_stored``. Storage keeps one column per
top-level key (``shared.store.tenant_settings``), so an older row simply lacks the new column and
reads as the default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from shared.rules.contract import ValidationError

TWO_WAY = "two_way"
CRM_TO_OUTLOOK = "crm_to_outlook"
DIRECTIONS = (TWO_WAY, CRM_TO_OUTLOOK)


@dataclass(frozen=True, slots=True)
class FieldDirections:
    """Direction per field group; the groups name what a CRM admin chooses between."""

    subject: str = CRM_TO_OUTLOOK
    description: str = CRM_TO_OUTLOOK
    location: str = CRM_TO_OUTLOOK
    times: str = TWO_WAY  # start, end and all_day move together
    reminder: str = CRM_TO_OUTLOOK

    def two_way(self, group: str) -> bool:
        return bool(getattr(self, group, CRM_TO_OUTLOOK) == TWO_WAY)

    def as_json(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


GROUPS = tuple(f.name for f in fields(FieldDirections))


CAPTURE_OFF = "off"
CAPTURE_EXTERNAL = "external"
CAPTURE_ALL = "all"
CAPTURE_MODES = (CAPTURE_OFF, CAPTURE_EXTERNAL, CAPTURE_ALL)
MAX_INTERNAL_DOMAINS = 100


@dataclass(frozen=True, slots=True)
class TenantSettings:
    field_directions: FieldDirections = field(default_factory=FieldDirections)
    # Issue 17: meetings booked in Outlook reported to the CRM (shared.rules.capture_plan).
    capture_meetings: str = CAPTURE_OFF
    capture_body: bool = False
    internal_domains: tuple[str, ...] = ()

    @property
    def capturing(self) -> bool:
        return self.capture_meetings != CAPTURE_OFF
    dedicated_calendar_name: str | None = None  # None: by the user's locale ("CRM")

    def as_json(self) -> dict[str, Any]:
        return {
            "field_directions": self.field_directions.as_json(),
            "capture_meetings": self.capture_meetings,
            "capture_body": self.capture_body,
            "internal_domains": list(self.internal_domains),
            "dedicated_calendar_name": self.dedicated_calendar_name,
        }


DEFAULT = TenantSettings()


def _parse_directions(value: Any, errors: list[tuple[str, str]]) -> FieldDirections:
    if not isinstance(value, dict):
        errors.append(("field_directions", "must be an object of field: direction"))
        return FieldDirections()
    chosen: dict[str, str] = {}
    for name, direction in value.items():
        path = f"field_directions.{name}"
        if name not in GROUPS:
            errors.append((path, f"unknown field; known: {', '.join(GROUPS)}"))
        elif direction not in DIRECTIONS:
            errors.append((path, f"must be one of {', '.join(DIRECTIONS)}"))
        else:
            chosen[name] = direction
    return replace(FieldDirections(), **chosen)


def _parse_capture(value: Any, errors: list[tuple[str, str]]) -> str:
    if value not in CAPTURE_MODES:
        errors.append(("capture_meetings", f"must be one of {', '.join(CAPTURE_MODES)}"))
        return CAPTURE_OFF
    return str(value)


def _parse_capture_body(value: Any, errors: list[tuple[str, str]]) -> bool:
    if not isinstance(value, bool):
        errors.append(("capture_body", "must be true or false"))
        return False
    return value


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


def _parse_domains(value: Any, errors: list[tuple[str, str]]) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_INTERNAL_DOMAINS:
        errors.append(("internal_domains", f"must be a list of at most {MAX_INTERNAL_DOMAINS} domain names"))
        return ()
    domains: list[str] = []
    for i, item in enumerate(value):
        name = item.strip().lower().rstrip(".") if isinstance(item, str) else ""
        if not _DOMAIN.match(name):
            errors.append((f"internal_domains[{i}]", "must be a domain name such as contoso.com"))
        elif name not in domains:
            domains.append(name)
    return tuple(domains)
def _parse_calendar_name(value: Any, errors: list[tuple[str, str]]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 255:
        errors.append(("dedicated_calendar_name", "must be a calendar name of 1 to 255 characters, or null"))
        return None
    return value.strip()


_PARSERS: dict[str, Callable[[Any, list[tuple[str, str]]], Any]] = {
    "field_directions": _parse_directions,
    "capture_meetings": _parse_capture,
    "capture_body": _parse_capture_body,
    "internal_domains": _parse_domains,
    "dedicated_calendar_name": _parse_calendar_name,
}


def parse_settings(body: Any) -> TenantSettings:
    """The document a ``PUT`` sends, validated; ``ValidationError`` names every bad field."""
    if not isinstance(body, dict):
        raise ValidationError([("body", "must be a JSON object")])
    errors: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for key, value in body.items():
        parser = _PARSERS.get(key)
        if parser is None:
            errors.append((key, "unknown setting"))
            continue
        values[key] = parser(value, errors)
    if errors:
        raise ValidationError(errors)
    return TenantSettings(**values)


def to_stored(settings: TenantSettings) -> dict[str, str]:
    """One column per top-level key, each a JSON text."""
    return {key: json.dumps(value, sort_keys=True) for key, value in settings.as_json().items()}


def from_stored(columns: dict[str, Any]) -> TenantSettings:
    """What ``to_stored`` wrote; a missing or unreadable column reads as its default (a row written
    by an older or newer version never stops the sync)."""
    values: dict[str, Any] = {}
    for key, parser in _PARSERS.items():
        raw = columns.get(key)
        if not isinstance(raw, str):
            continue
        errors: list[tuple[str, str]] = []
        try:
            parsed = parser(json.loads(raw), errors)
        except ValueError:
            continue
        if not errors:
            values[key] = parsed
    return TenantSettings(**values)
