"""BFCL docs -> JSON Schema, and BFCL's python-call strings."""

from __future__ import annotations

import jsonschema
import pytest

from astra.bfcl._calls import CallParseError, format_call, parse_call
from astra.bfcl._data import BACKEND_CLASSES, function_docs
from astra.bfcl._schema import function_input_schema
from astra.registry import SchemaError


@pytest.mark.parametrize("class_name", BACKEND_CLASSES)
def test_every_doc_becomes_a_valid_object_schema(class_name: str) -> None:
    docs = function_docs(class_name)
    assert docs
    for doc in docs:
        schema = function_input_schema(doc)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"
        text = str(schema)
        for bfcl_only in ("'dict'", "'float'", "'tuple'", "'any'"):
            assert f"'type': {bfcl_only}" not in text, (doc["name"], schema)


def test_bfcl_types_map_to_json_schema() -> None:
    schema = function_input_schema(
        {"name": "f", "parameters": {
            "type": "dict",
            "properties": {
                "x": {"type": "float", "description": "a number"},
                "pair": {"type": "tuple", "items": {"type": "integer"}},
                "blob": {"type": "any"},
                "nested": {"type": "dict", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
            },
            "required": ["x"],
        }}
    )
    assert schema["type"] == "object"
    props = schema["properties"]
    assert props["x"] == {"type": "number", "description": "a number"}
    assert props["pair"] == {"type": "array", "items": {"type": "integer"}}
    assert props["blob"] == {}
    assert props["nested"]["type"] == "object"
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"x": 1.5, "pair": [1, 2], "blob": [None], "nested": {"ok": True}})
    assert not validator.is_valid({"x": "1.5"})


def test_unknown_type_names_the_field() -> None:
    with pytest.raises(SchemaError, match=r"f\.parameters\.properties\.when\.type"):
        function_input_schema(
            {"name": "f", "parameters": {"type": "dict", "properties": {"when": {"type": "datetime"}}}}
        )


def test_parse_call_names_positional_arguments_from_the_signature() -> None:
    name, args = parse_call("sort('final_report.pdf')", {"sort": ("file_name",)})
    assert (name, args) == ("sort", {"file_name": "final_report.pdf"})
    name, args = parse_call("mv(source='a', destination='b')")
    assert (name, args) == ("mv", {"source": "a", "destination": "b"})
    assert parse_call("f(x=[1, 2.5], y={'k': True}, z=-3)")[1] == {"x": [1, 2.5], "y": {"k": True}, "z": -3}


@pytest.mark.parametrize(
    "bad",
    ["sort('x')", "a.b(x=1)", "f(x=g(1))", "f(**kw)", "f(x=1, x=2)", "not python ("],
)
def test_parse_call_rejects_what_it_cannot_replay(bad: str) -> None:
    with pytest.raises(CallParseError):
        parse_call(bad, {})


def test_format_call_is_bfcls_decoded_form() -> None:
    # bfcl_eval.model_handler.utils.convert_to_function_call: name(k=repr(v),...) without spaces
    assert format_call("cd", {"folder": "document"}) == "cd(folder='document')"
    assert format_call("f", {"a": 1, "b": [1, "x"], "c": None}) == "f(a=1,b=[1, 'x'],c=None)"
    assert format_call("ls", {}) == "ls()"
    name, args = parse_call(format_call("f", {"a": 1.0, "b": {"k": [True]}}))
    assert (name, args) == ("f", {"a": 1.0, "b": {"k": [True]}})
