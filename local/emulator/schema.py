"""Request-body validation against the official v1.0 schema extract (graph_v1_calendar_schema.json, copied
from shared/reference; itself extracted from microsoftgraph/msgraph-metadata `schemas/v1.0-Prod.csdl`)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("graph_v1_calendar_schema.json")

# Navigation properties a client may send inline when creating or updating an event.
_WRITABLE_NAVIGATION = {"singleValueExtendedProperties", "multiValueExtendedProperties", "extensions", "attachments"}


class SchemaError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@cache
def _types() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))["types"]


def _strip(name: str) -> str:
    return name.removeprefix("microsoft.graph.").removeprefix("graph.")


def properties(type_name: str) -> dict[str, str]:
    """Structural properties of a type including inherited ones."""
    out: dict[str, str] = {}
    t = _types().get(type_name)
    while t is not None:
        for k, v in (t.get("properties") or {}).items():
            out.setdefault(k, v)
        base = t.get("base")
        t = _types().get(base) if base else None
    return out


def navigation(type_name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    t = _types().get(type_name)
    while t is not None:
        for k, v in (t.get("navigation") or {}).items():
            out.setdefault(k, v)
        base = t.get("base")
        t = _types().get(base) if base else None
    return out


def enum_members(type_name: str) -> list[str] | None:
    t = _types().get(type_name)
    if t and t.get("kind") == "enum":
        return list(t["members"])
    return None


def validate_entity(body: dict, type_name: str = "event") -> dict:
    """Validate a create/update body; returns it with enum values normalised to their canonical case."""
    if not isinstance(body, dict):
        raise SchemaError(f"Cannot read the request body as a 'microsoft.graph.{type_name}'.")
    props = properties(type_name)
    nav = navigation(type_name)
    out = {}
    for key, value in body.items():
        if key.startswith("@"):
            continue  # instance annotations such as @odata.type
        if key in props:
            out[key] = _value(value, props[key], f"{type_name}.{key}")
        elif key in nav and key in _WRITABLE_NAVIGATION:
            out[key] = _value(value, nav[key], f"{type_name}.{key}")
        else:
            raise SchemaError(_unknown(key, type_name))
    return out


def _unknown(key: str, type_name: str) -> str:
    return (
        f"The property '{key}' does not exist on type 'microsoft.graph.{type_name}'. Make sure to only use "
        "property names that are defined by the type or mark the type as open type."
    )


_PRIMITIVE_CHECKS = {
    "Edm.String": lambda v: isinstance(v, str),
    "Edm.Boolean": lambda v: isinstance(v, bool),
    "Edm.Int32": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
    "Edm.Int64": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "Edm.Double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "Edm.DateTimeOffset": lambda v: isinstance(v, str),
    "Edm.Date": lambda v: isinstance(v, str),
    "Edm.TimeOfDay": lambda v: isinstance(v, str),
    "Edm.Guid": lambda v: isinstance(v, str),
}


def _value(value, type_ref: str, where: str):
    if value is None:
        return None
    if type_ref.startswith("Collection(") and type_ref.endswith(")"):
        inner = type_ref[len("Collection(") : -1]
        if not isinstance(value, list):
            raise SchemaError(f"Cannot convert a non-collection value to the expected type '{type_ref}' ({where}).")
        return [_value(v, inner, where) for v in value]
    if type_ref in _PRIMITIVE_CHECKS:
        if not _PRIMITIVE_CHECKS[type_ref](value):
            raise SchemaError(f"Cannot convert a primitive value to the expected type '{type_ref}' ({where}).")
        return value
    name = _strip(type_ref)
    t = _types().get(name)
    if t is None:
        return value  # a type the extract does not describe: accepted as is
    if t["kind"] == "enum":
        if not isinstance(value, str):
            raise SchemaError(f"Cannot convert a primitive value to the expected type 'microsoft.graph.{name}'.")
        members = {m.lower(): m for m in t["members"]}
        # Flag enums are written "a,b"; each member must exist.
        parts = [p.strip() for p in value.split(",")]
        for p in parts:
            if p.lower() not in members:
                raise SchemaError(f"Requested value '{value}' was not found.")
        return ",".join(members[p.lower()] for p in parts)
    if not isinstance(value, dict):
        raise SchemaError(f"Cannot convert a primitive value to the expected type 'microsoft.graph.{name}'.")
    props = properties(name)
    out = {}
    for key, v in value.items():
        if key.startswith("@"):
            out[key] = v
            continue
        if key not in props:
            raise SchemaError(_unknown(key, name))
        out[key] = _value(v, props[key], f"{name}.{key}")
    return out
