"""A vendored minimal SARIF 2.1.0 schema (the required structure of the OASIS standard, written from the spec:
sections 3.13 sarifLog, 3.14 run, 3.18-3.19 tool/toolComponent, 3.49 reportingDescriptor, 3.27 result,
3.28-3.30 location/physicalLocation/region, 3.20 invocation, 3.24 artifact), plus a small validator for the
JSON-Schema subset it uses, so the tests need no network and no extra dependency."""

from __future__ import annotations

import re
from typing import Any

LEVELS = ["none", "note", "warning", "error"]
KINDS = ["notApplicable", "pass", "fail", "review", "open", "informational"]
_TEXT = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"},
                                                                  "markdown": {"type": "string"}}}
_BAG = {"type": "object"}

SCHEMA: dict[str, Any] = {
    "$ref": "#/definitions/sarifLog",
    "definitions": {
        "sarifLog": {
            "type": "object", "required": ["version", "runs"], "additionalProperties": False,
            "properties": {"$schema": {"type": "string", "pattern": "^https?://"},
                           "version": {"enum": ["2.1.0"]},
                           "runs": {"type": "array", "items": {"$ref": "#/definitions/run"}},
                           "inlineExternalProperties": {"type": "array"}, "properties": _BAG}},
        "run": {
            "type": "object", "required": ["tool"], "additionalProperties": False,
            "properties": {
                "tool": {"$ref": "#/definitions/tool"},
                "invocations": {"type": "array", "items": {"$ref": "#/definitions/invocation"}},
                "artifacts": {"type": "array", "items": {"$ref": "#/definitions/artifact"}},
                "results": {"type": "array", "items": {"$ref": "#/definitions/result"}},
                "automationDetails": {"type": "object", "properties": {"id": {"type": "string"},
                                                                      "guid": {"type": "string"}}},
                "originalUriBaseIds": {"type": "object"}, "language": {"type": "string"},
                "columnKind": {"enum": ["utf16CodeUnits", "unicodeCodePoints"]},
                "baselineGuid": {"type": "string"}, "taxonomies": {"type": "array"},
                "versionControlProvenance": {"type": "array"}, "logicalLocations": {"type": "array"},
                "properties": _BAG}},
        "tool": {"type": "object", "required": ["driver"], "additionalProperties": False,
                 "properties": {"driver": {"$ref": "#/definitions/toolComponent"},
                                "extensions": {"type": "array", "items": {"$ref": "#/definitions/toolComponent"}},
                                "properties": _BAG}},
        "toolComponent": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}, "version": {"type": "string"},
                           "semanticVersion": {"type": "string"}, "informationUri": {"type": "string"},
                           "rules": {"type": "array", "items": {"$ref": "#/definitions/reportingDescriptor"}},
                           "properties": _BAG}},
        "reportingDescriptor": {
            "type": "object", "required": ["id"], "additionalProperties": False,
            "properties": {"id": {"type": "string", "minLength": 1}, "name": {"type": "string"},
                           "shortDescription": _TEXT, "fullDescription": _TEXT, "help": _TEXT,
                           "helpUri": {"type": "string"},
                           "defaultConfiguration": {"type": "object", "additionalProperties": False,
                                                    "properties": {"level": {"enum": LEVELS},
                                                                   "enabled": {"type": "boolean"},
                                                                   "rank": {"type": "number"},
                                                                   "properties": _BAG}},
                           "properties": _BAG}},
        "result": {
            "type": "object", "required": ["message"], "additionalProperties": False,
            "properties": {"ruleId": {"type": "string"}, "ruleIndex": {"type": "integer", "minimum": -1},
                           "kind": {"enum": KINDS}, "level": {"enum": LEVELS}, "message": _TEXT,
                           "locations": {"type": "array", "items": {"$ref": "#/definitions/location"}},
                           "partialFingerprints": {"type": "object", "additionalProperties": {"type": "string"}},
                           "fingerprints": {"type": "object", "additionalProperties": {"type": "string"}},
                           "guid": {"type": "string"}, "rank": {"type": "number"}, "properties": _BAG}},
        "location": {
            "type": "object", "additionalProperties": False,
            "properties": {"id": {"type": "integer", "minimum": -1},
                           "physicalLocation": {"$ref": "#/definitions/physicalLocation"},
                           "logicalLocations": {"type": "array", "items": {
                               "type": "object", "properties": {"name": {"type": "string"},
                                                                "kind": {"type": "string"}}}},
                           "message": _TEXT, "properties": _BAG}},
        "physicalLocation": {
            "type": "object", "additionalProperties": False,
            "properties": {"artifactLocation": {"$ref": "#/definitions/artifactLocation"},
                           "region": {"type": "object", "properties": {
                               "startLine": {"type": "integer", "minimum": 1},
                               "byteOffset": {"type": "integer", "minimum": 0},
                               "byteLength": {"type": "integer", "minimum": 0}}},
                           "properties": _BAG}},
        "artifactLocation": {"type": "object", "additionalProperties": False,
                             "properties": {"uri": {"type": "string", "minLength": 1},
                                            "uriBaseId": {"type": "string"},
                                            "index": {"type": "integer", "minimum": -1}, "properties": _BAG}},
        "invocation": {
            "type": "object", "required": ["executionSuccessful"],
            "properties": {"executionSuccessful": {"type": "boolean"},
                           "startTimeUtc": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT.*Z$"},
                           "endTimeUtc": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT.*Z$"},
                           "toolExecutionNotifications": {"type": "array", "items": {
                               "type": "object", "required": ["message"],
                               "properties": {"message": _TEXT, "level": {"enum": LEVELS}}}},
                           "properties": _BAG}},
        "artifact": {"type": "object",
                     "properties": {"location": {"$ref": "#/definitions/artifactLocation"},
                                    "length": {"type": "integer", "minimum": -1},
                                    "hashes": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "properties": _BAG}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float), "integer": int}


def validate(instance: Any, schema: dict[str, Any] = SCHEMA, root: dict[str, Any] | None = None,
             path: str = "$") -> list[str]:
    """Errors of `instance` against the JSON-Schema subset used above (empty list: valid)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return validate(instance, root["definitions"][name], root, path)
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(instance, _TYPES[kind]) and not (kind in ("integer", "number") and isinstance(instance, bool))
        if not ok:
            return [f"{path}: expected {kind}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{path}: {instance!r} does not match {schema['pattern']}")
    if isinstance(instance, (int, float)) and not isinstance(instance, bool) and "minimum" in schema \
            and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} < {schema['minimum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                errors += validate(value, props[key], root, f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                errors += validate(value, extra, root, f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], root, f"{path}[{i}]")
    return errors
