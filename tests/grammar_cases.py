"""Constraint cases for the grammar tests: bounded JSON schemas and regexes (every string, array and number is
bounded, and every object closed with ``strict_json_schema`` — an open object lets a random model add properties
until max_new_tokens — so even a random model finishes a document well within max_new_tokens), and helpers that
check outputs against them."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator, validators

from radixgen.grammar import strict_json_schema
from radixgen.grammar.json_formats import format_checker

S = {"type": "string", "maxLength": 8}
I = {"type": "integer", "minimum": -50, "maximum": 50}  # noqa: E741

_WRITTEN: list[dict[str, Any]] = [
    # scalars
    {"type": "integer", "minimum": 0, "maximum": 9},
    {"type": "integer", "minimum": -1000, "maximum": -10},
    {"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 9},
    {"type": "integer", "minimum": 0, "maximum": 60, "multipleOf": 5},
    {"type": "number", "minimum": -1.5, "maximum": 2.25},
    {"type": "boolean"},
    {"type": "null"},
    {"type": "string", "minLength": 2, "maxLength": 5},
    {"type": "string", "pattern": "^[a-z]{2,6}-[0-9]{1,3}$"},
    {"type": "string", "format": "date"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "time"},
    {"type": "string", "format": "uuid"},
    {"type": "string", "format": "ipv4"},
    {"enum": ["red", "green", "blue", 7, None, True]},
    {"const": {"version": 2, "tags": ["a", "b"]}},
    {"enum": ["café", "日本語", 'quote"inside', "back\\slash", "tab\there", "😀"]},
    {"const": "line\nbreak \u00e9 \\ \""},
    {"type": ["integer", "null"], "minimum": 0, "maximum": 3},
    # objects
    {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"a": S, "b": I, "c": {"type": "boolean"}}, "required": ["a"]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": I, "email": S},
     "required": ["id", "email"]}, "active": {"type": "boolean"}}, "required": ["user", "active"]},
    {"type": "object", "properties": {"l1": {"type": "object", "properties": {"l2": {"type": "object",
     "properties": {"l3": {"type": "array", "items": I, "maxItems": 2}}, "required": ["l3"]}}, "required": ["l2"]}},
     "required": ["l1"]},
    {"type": "object", "properties": {"nom": {"type": "string", "maxLength": 4}, "prénom": S, "名前": S},
     "required": ["nom", "prénom", "名前"]},
    {"type": "object", "properties": {"kind": {"const": "point"}, "x": {"type": "number", "minimum": 0,
     "maximum": 1}, "y": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["kind", "x", "y"],
     "additionalProperties": False},
    {"type": "object", "patternProperties": {"^k[0-9]$": I}, "additionalProperties": False, "maxProperties": 3},
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}, "at": {"type": "string",
     "format": "date-time"}}, "required": ["id", "at"]},
    # arrays
    {"type": "array", "items": I, "minItems": 2, "maxItems": 4},
    {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1, "maxItems": 3},
    {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}, "maxItems": 2},
    {"type": "array", "prefixItems": [S, I, {"type": "boolean"}], "items": False},
    {"type": "array", "items": {"type": "object", "properties": {"k": S, "v": I}, "required": ["k", "v"]},
     "minItems": 1, "maxItems": 2},
    # composition
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "string", "maxLength": 3}]},
    {"oneOf": [{"type": "object", "properties": {"type": {"const": "cat"}, "lives": I}, "required": ["type", "lives"]},
               {"type": "object", "properties": {"type": {"const": "dog"}, "bark": S}, "required": ["type", "bark"]}]},
    {"oneOf": [{"type": "boolean"}, {"type": "null"}, {"type": "string", "maxLength": 2}]},
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "null"}, {"type": "array", "items": I, "maxItems": 2}]}},
     "required": ["v"]},
    {"allOf": [{"type": "object", "properties": {"a": I}, "required": ["a"]},
               {"properties": {"b": S}, "required": ["b"]}]},
    {"type": "object", "properties": {"a": I, "b": S}, "anyOf": [{"required": ["a"]}, {"required": ["b"]}]},
    # references
    {"$defs": {"item": {"type": "object", "properties": {"n": I, "s": S}, "required": ["n", "s"]}},
     "type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 3},
    {"definitions": {"p": {"type": "object", "properties": {"x": I, "y": I}, "required": ["x", "y"]}},
     "type": "object", "properties": {"from": {"$ref": "#/definitions/p"}, "to": {"$ref": "#/definitions/p"}},
     "required": ["from", "to"]},
    {"$defs": {"base": {"type": "object", "properties": {"id": I}, "required": ["id"]}},
     "allOf": [{"$ref": "#/$defs/base"}, {"properties": {"label": S}, "required": ["label"]}]},
    {"$defs": {"name": {"type": "string", "maxLength": 5}}, "type": "object",
     "properties": {"first": {"$ref": "#/$defs/name"}, "nick": {"$ref": "#/$defs/name", "description": "d"}},
     "required": ["first", "nick"]},
    # draft-4 / draft-7 spellings
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "minimum": 3, "maximum": 8,
     "exclusiveMinimum": True},
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [I, S],
     "additionalItems": False},
    {"type": "object", "properties": {"a": I}, "required": ["a", "extra"], "additionalProperties": {"type": "boolean"},
     "maxProperties": 2},
]  # fmt: skip

SCHEMAS: list[dict[str, Any]] = [strict_json_schema(s) for s in _WRITTEN]

REGEXES: list[str] = [
    r"[a-z]{1,10}",
    r"\d{3}-\d{4}",
    r"(cat|dog|bird)( and (cat|dog|bird)){0,3}",
    r"[a-z]{1,8}@[a-z]{1,8}\.(com|org|net)",
    r"(\d{1,3}\.){3}\d{1,3}",
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    r"[A-Z][a-z]{0,9}( [A-Z][a-z]{0,9}){0,2}",
    r"0x[0-9a-f]{1,8}",
    r"(true|false)",
    r"-?\d{1,3}(\.\d{1,2})?",
    r"\$\d{1,3}\.\d{2}",
    r"\[\d{1,2}(, \d{1,2}){0,3}\]",
    r"(ab){1,3}c?",
    r"[αβγδ]{1,5}",
    r"é{1,3}à?",
    r"[\u4e00-\u9fff]{1,3}",
    r"😀{1,2}",
    r"\"([a-z]|\\n){0,6}\"",
    r"\(\d{1,4}\)",
    r"[A-Z]{2}\d{2} [A-Z]{3}",
    r"(yes|no|maybe)",
    r"\w{1,6}",
    r"[^\n\"\\]{1,6}",
    r"\d{1,2}:\d{2} (AM|PM)",
    r"#[0-9A-Fa-f]{6}",
    r"(\+|-)?[1-9]\d{0,2}",
    r"[a-z]{1,5}(_[a-z]{1,5}){0,2}",
    r"(\{|\})[a-z]{0,3}",
    r"[ \t]{0,2}x[ \t]{0,2}",
    r"(Mr|Ms|Dr)\. [A-Z][a-z]{1,8}",
    r"v\d\.\d{1,2}\.\d{1,2}(-(alpha|beta))?",
    r"[01]{4,8}",
]

EBNF = [
    'root ::= "(" expr ")"\nexpr ::= num | num "+" num\nnum ::= [0-9] | [1-9] [0-9]',
    'root ::= ("yes" | "no") ("!" | "?")?',
]
EBNF_PYTHON_REGEX = [r"\((\d|[1-9]\d)(\+(\d|[1-9]\d))?\)", r"(yes|no)[!?]?"]


FORMATS = format_checker()


def schema_errors(schema: dict[str, Any], text: str) -> list[str]:
    """Why ``text`` is not a JSON document valid against ``schema`` (empty when it is)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return [f"not JSON: {e}: {text!r}"]
    cls = validators.validator_for(schema, default=Draft202012Validator)
    return [f"{e.message} ({text!r})" for e in cls(schema, format_checker=FORMATS).iter_errors(doc)]
