"""Checks real requests, answers and callbacks against ``docs/openapi.yaml`` (JSON Schema 2020-12,
as OpenAPI 3.1 uses it), so the contract document cannot drift from what the service does."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import ROOT

BASE = "urn:crm-outlook-sync:openapi"


@functools.cache
def document() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(document(), default_specification=DRAFT202012)
    return Registry().with_resource(BASE, resource)


def validate(pointer: str, instance: Any) -> None:
    """Validate ``instance`` against the schema at ``pointer`` (e.g. ``#/components/schemas/Status``)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"{BASE}{pointer}"}
    validator = jsonschema.Draft202012Validator(
        schema, registry=_registry(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(instance)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = functools.reduce(lambda d, k: d[k], node["$ref"].lstrip("#/").split("/"), document())
    return node


def _escape(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


def check(method: str, path: str, answer: Any, request_body: Any = None) -> None:
    """``path`` is the template as written in the document (``/api/tenants/{tenant}/...``)."""
    operation = document()["paths"][path][method.lower()]
    if request_body is not None and answer.status_code < 400:
        content = _resolve(operation["requestBody"])["content"]["application/json"]
        assert "$ref" in content["schema"]
        validate(content["schema"]["$ref"], request_body)
    responses = operation["responses"]
    status = str(answer.status_code)
    assert status in responses, f"{method} {path} answered {status}, which the contract does not list"
    response = _resolve(responses[status])
    content = response.get("content", {})
    if "application/json" in content:
        assert answer.headers["Content-Type"].startswith("application/json")
        pointer = (
            f"#/paths/{_escape(path)}/{method.lower()}/responses/{status}/content/application~1json/schema"
        )
        if "$ref" in content["application/json"]["schema"]:
            pointer = content["application/json"]["schema"]["$ref"]
        validate(pointer, answer.json())


def check_callback(callback: dict[str, Any]) -> None:
    assert callback["type"] in document()["webhooks"], callback["type"]
    validate("#/components/schemas/Callback", callback)
