"""The hub's standard description of the canonical messages (events/message_schemas.json): one
self-contained JSON Schema per message, what a payload does differently from it, and the same
documents for the OpenAPI description.

Pure functions, no ORM. A payload that departs from its schema is still accepted and delivered as
sent (routing notes the departures on the event): the schemas describe what stores send, so that
a mapping or an endpoint can be written against them, and they do not gate what a store may push.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from events.messages import message_canonical, message_resource
from events.validation import json_type

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SOURCE = Path(__file__).with_name("message_schemas.json")
# How much of a departure's description is kept: the schema's own message can quote a whole object.
_DETAIL_MAX_CHARS = 200


@dataclass(frozen=True)
class Departure:
    """Where a payload differs from its message's schema, and how."""

    path: str
    detail: str


@dataclass(frozen=True)
class Departures:
    schema: str
    found: list[Departure]
    # More departures than were kept.
    more: bool = False


@functools.cache
def _source() -> dict[str, Any]:
    return json.loads(_SOURCE.read_text(encoding="utf-8"))


def schema_names() -> list[str]:
    """The messages with a schema, by resource: order, payment, product, shipment, user."""
    return sorted(_source()["messages"])


def schema_name_for(message: str) -> str | None:
    """The schema a message's payload is described by ('order:new' and 'order' give 'order'), or
    None for a message the standard description does not cover (stock:change)."""
    try:
        resource = message_resource(message_canonical(message)) if ":" in message else message.strip().lower()
    except ValueError:
        return None
    return resource if resource in _source()["messages"] else None


@functools.cache
def _document(name: str) -> dict[str, Any]:
    source = _source()
    document = {"$schema": SCHEMA_DIALECT, **source["messages"][name]}
    defs = {key: source["$defs"][key] for key in sorted(_defs_used(document, source["$defs"]))}
    if defs:
        document["$defs"] = defs
    Draft202012Validator.check_schema(document)
    return document


def schema_document(name: str) -> dict[str, Any]:
    """The JSON Schema of a message's payload, with only the $defs it uses: a document that stands
    on its own. A copy: the caller may change it (the view adds its $id)."""
    return copy.deepcopy(_document(name))


def _defs_used(node: Any, defs: Mapping[str, Any], seen: set[str] | None = None) -> set[str]:
    """The names of the $defs a schema refers to, directly or through other $defs."""
    seen = set() if seen is None else seen
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name not in seen:
                seen.add(name)
                _defs_used(defs[name], defs, seen)
        for value in node.values():
            _defs_used(value, defs, seen)
    elif isinstance(node, list):
        for value in node:
            _defs_used(value, defs, seen)
    return seen


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    """The document with every $ref replaced by what it names: jsonschema resolves a $ref through
    its registry on every visit, which cost several times the check itself (docs/protocol.md)."""
    document = _document(name)
    return Draft202012Validator(_inlined(document, document.get("$defs", {})))


@functools.cache
def _conforms(name: str) -> Any:
    """A compiled yes/no check of the same document: most pushes conform, and compiled code answers
    that many times faster than jsonschema, which is then asked only where a payload departs."""
    document = _document(name)
    # The schemas use only keywords draft 7 has, the newest dialect fastjsonschema compiles.
    inlined = {**_inlined(document, document.get("$defs", {})), "$schema": "http://json-schema.org/draft-07/schema#"}
    return fastjsonschema.compile(inlined)


def _conforming(name: str, payload: Any) -> bool:
    try:
        _conforms(name)(payload)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def _inlined(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inlined(item, defs) for item in node]
    if not isinstance(node, Mapping):
        return node
    out = {key: _inlined(value, defs) for key, value in node.items() if key not in ("$ref", "$defs")}
    ref = node.get("$ref")
    if ref is None:
        return out
    target = _inlined(defs[ref.removeprefix("#/$defs/")], defs)
    # Beside a $ref only annotations (a description) are written: they replace the target's.
    return {**target, **out} if set(out) <= {"description", "title"} else {"allOf": [target], **out}


def payload_departures(message: str, payload: Any, *, limit: int) -> Departures | None:
    """How the payload departs from its message's schema: at most `limit` departures, in the
    order the validator finds them; None when it conforms or its message has no schema."""
    name = schema_name_for(message)
    if name is None or limit <= 0:
        return None
    if _conforming(name, payload):
        return None
    errors = list(islice(_leaves(_validator(name).iter_errors(payload)), limit + 1))
    if not errors:
        return None
    found = [Departure(path=_envelope_path(e), detail=_detail(e)) for e in errors[:limit]]
    return Departures(schema=name, found=found, more=len(errors) > limit)


def _leaves(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    """An allOf's own error stands for the errors inside it: those name the place."""
    for error in errors:
        if error.validator == "allOf" and error.context:
            yield from error.context
        else:
            yield error


def _envelope_path(error: ValidationError) -> str:
    """The JSON path of the place in the pushed envelope: $.payload.order.line_items[0].quantity."""
    return "$.payload" + error.json_path.removeprefix("$")


def _detail(error: ValidationError) -> str:
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"is {_json_type(error.instance)}; the schema wants {' or '.join(wanted)}"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{_quoted(error.instance)} does not match {error.validator_value}"
    if error.validator == "minimum":
        return f"is {error.instance}; the schema wants at least {error.validator_value}"
    text = error.message
    return text if len(text) <= _DETAIL_MAX_CHARS else text[: _DETAIL_MAX_CHARS - 1] + "…"


def _quoted(text: str) -> str:
    shown = text if len(text) <= 60 else text[:59] + "…"
    return json.dumps(shown, ensure_ascii=False)


def _json_type(value: Any) -> str:
    # A schema tells integers from numbers, so its departures do too.
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer"
    return json_type(value)


def departures_text(departures: Departures) -> tuple[str, str]:
    """The subject and description of the warning that says how an event departs from its schema."""
    first = departures.found[0]
    subject = f"Departs from the {departures.schema} schema at {first.path}"
    lines = [f"{d.path}: {d.detail}" for d in departures.found]
    if departures.more:
        lines.append(f"More departures not listed (the first {len(departures.found)} are).")
    lines.append(f"The event was accepted and delivered as sent; the schema is at /schemas/{departures.schema}.")
    return subject, "\n".join(lines)


# --- The same documents for the OpenAPI description (3.0: no type arrays, null or $defs) -------

_STRING_KEYWORDS = frozenset({"pattern", "minLength", "maxLength", "format"})
_NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
_OBJECT_KEYWORDS = frozenset({"properties", "required", "additionalProperties"})
_ARRAY_KEYWORDS = frozenset({"items", "minItems", "maxItems"})
_TYPED_KEYWORDS = {
    "string": _STRING_KEYWORDS,
    "number": _NUMBER_KEYWORDS,
    "integer": _NUMBER_KEYWORDS,
    "object": _OBJECT_KEYWORDS,
    "array": _ARRAY_KEYWORDS,
}


def openapi_components(prefix: str = "Message") -> dict[str, Any]:
    """Every message schema and shared part as OpenAPI 3.0 components: '<prefix>Order' for the
    order message's payload, '<prefix>Def_address' for a shared part, refs rewritten to match."""
    source = _source()
    components = {f"{prefix}Def_{key}": _openapi(value, prefix) for key, value in sorted(source["$defs"].items())}
    for name in schema_names():
        components[f"{prefix}{name.capitalize()}"] = _openapi(source["messages"][name], prefix)
    return components


def _openapi(node: Any, prefix: str) -> Any:
    if isinstance(node, list):
        return [_openapi(item, prefix) for item in node]
    if not isinstance(node, Mapping):
        return node
    out = {
        key: _openapi(value, prefix)
        for key, value in node.items()
        if key not in ("$comment", "$schema", "$defs", "$id", "$ref")
    }
    if "$ref" in node:
        target = {"$ref": f"#/components/schemas/{prefix}Def_{node['$ref'].removeprefix('#/$defs/')}"}
        # OpenAPI 3.0 ignores a $ref's siblings: the description goes beside it in an allOf.
        return {"allOf": [target], **out} if out else target
    kinds = node.get("type")
    if isinstance(kinds, list):
        nullable = "null" in kinds
        kinds = [kind for kind in kinds if kind != "null"]
        typed = {k for kind in kinds for k in _TYPED_KEYWORDS.get(kind, ())}
        shared = {key: value for key, value in out.items() if key != "type" and key not in typed}
        if len(kinds) == 1:
            out = {**out, "type": kinds[0]}
        else:
            branches = [
                {"type": kind, **{k: v for k, v in out.items() if k in _TYPED_KEYWORDS.get(kind, ())}} for kind in kinds
            ]
            out = {**shared, "anyOf": branches}
        if nullable:
            out["nullable"] = True
    return out
