"""Per-tenant sync settings (design §3 ``GET``/``PUT /api/tenants/{tenant}/settings``), decided here.

One document per tenant. Today it holds ``field_directions``: per field group, whether an Outlook
edit of it is reported to the CRM (``two_way``) or not (``crm_to_outlook``: the edit stays in
Outlook until the CRM's next change of the activity overwrites it). Defaults keep the contract
as it was before per-field directions existed: ``times`` two-way, everything else
``crm_to_outlook``.

``PUT`` replaces the whole document: a key left out takes its default, so a CRM reads the document
(``GET``), changes what it wants and sends it back. A key this version does not know is a 400
naming it, never silently dropped.

Growing the document (issue 17: ``capture_meetings``, ``capture_body``, ``internal_domains``;
issue 18: ``dedicated_calendar_name``): add a field to ``TenantSettings`` with its default, a
parser to ``_PARSERS`` and its JSON to ``as_json``/``from_stored``. Storage keeps one column per
top-level key (``shared.store.tenant_settings``), so an older row simply lacks the new column and
reads as the default.
"""

from __future__ import annotations

import json
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


@dataclass(frozen=True, slots=True)
class TenantSettings:
    field_directions: FieldDirections = field(default_factory=FieldDirections)
    dedicated_calendar_name: str | None = None  # None: by the user's locale ("CRM")

    def as_json(self) -> dict[str, Any]:
        return {
            "field_directions": self.field_directions.as_json(),
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


def _parse_calendar_name(value: Any, errors: list[tuple[str, str]]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 255:
        errors.append(("dedicated_calendar_name", "must be a calendar name of 1 to 255 characters, or null"))
        return None
    return value.strip()


_PARSERS: dict[str, Callable[[Any, list[tuple[str, str]]], Any]] = {
    "field_directions": _parse_directions,
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
