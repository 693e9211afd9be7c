"""Normalisation of loose tool schemas and validation against the Draft 2020-12 metaschema."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from astra.registry import SchemaError, normalize_schema
from astra.registry._schema import validate_schema


def test_loose_type_names_become_json_schema_types() -> None:
    schema = normalize_schema({
        "type": "dict",
        "properties": {
            "price": {"type": "float"},
            "count": {"type": "int"},
            "name": {"type": "str"},
            "flag": {"type": "Bool"},
            "tags": {"type": "list", "items": "str"},
            "pair": {"type": "tuple", "items": [{"type": "int"}, {"type": "str"}]},
            "extra": {"type": "dict"},
            "anything": {"type": "any", "description": "free"},
        },
        "required": ["price", "price", "missing", 3],
    })
    props = schema["properties"]
    assert schema["type"] == "object"
    assert props["price"] == {"type": "number"}
    assert props["count"] == {"type": "integer"}
    assert props["name"] == {"type": "string"}
    assert props["flag"] == {"type": "boolean"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["pair"] == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}
    assert props["extra"] == {"type": "object"}
    assert props["anything"] == {"description": "free"}
    assert schema["required"] == ["price"]  # deduplicated, unknown and non-string names dropped


def test_missing_schema_and_missing_type_are_objects() -> None:
    assert normalize_schema(None) == {"type": "object", "properties": {}}
    assert normalize_schema({}) == {"type": "object", "properties": {}}
    assert normalize_schema({"properties": {"q": {"type": "string"}}})["type"] == "object"
    nested = normalize_schema(
        {"properties": {"o": {"properties": {"x": {"type": "int"}}}, "l": {"items": {"type": "int"}}}}
    )
    assert nested["properties"]["o"]["type"] == "object"
    assert nested["properties"]["l"] == {"type": "array", "items": {"type": "integer"}}


def test_per_property_required_and_nullable() -> None:
    schema = normalize_schema({
        "type": "object",
        "properties": {
            "a": {"type": "string", "required": True},
            "b": {"type": "string", "required": False},
            "c": {"type": "number", "nullable": True},
            "d": {"type": "string", "optional": True},
        },
        "required": ["d"],
    })
    assert schema["required"] == ["a"]
    assert schema["properties"]["b"] == {"type": "string"}
    assert schema["properties"]["c"] == {"type": ["number", "null"]}


def test_properties_given_as_a_list() -> None:
    schema = normalize_schema({"type": "object", "properties": [{"name": "city", "type": "str", "required": True}]})
    assert schema["properties"] == {"city": {"type": "string"}}
    assert schema["required"] == ["city"]


def test_invalid_schema_names_the_field() -> None:
    with pytest.raises(SchemaError) as info:
        normalize_schema({"type": "object", "properties": {"city": {"type": "strng"}}}, field="tool_list[0].parameters")
    assert info.value.field == "tool_list[0].parameters.properties.city.type"
    assert "strng" in info.value.reason

    with pytest.raises(SchemaError) as info:
        normalize_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}})
    assert info.value.field == "parameters.properties.n.minimum"


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(SchemaError) as info:
        normalize_schema({"type": "string"})
    assert info.value.field == "parameters.type"
    with pytest.raises(SchemaError, match="expected a JSON object"):
        normalize_schema(["a", "b"])


def test_normalisation_does_not_touch_the_input() -> None:
    original = {"type": "dict", "properties": {"a": {"type": "int", "required": True}}}
    normalize_schema(original)
    assert original == {"type": "dict", "properties": {"a": {"type": "int", "required": True}}}


def test_validate_schema_accepts_valid_and_rejects_invalid() -> None:
    validate_schema({"type": "object", "properties": {"a": {"type": ["string", "null"]}}})
    with pytest.raises(SchemaError) as info:
        validate_schema({"type": "object", "required": "a"}, field="out")
    assert info.value.field == "out.required"


_json_leaf = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5)
_loose_types = st.sampled_from(["dict", "float", "int", "str", "bool", "list", "tuple", "object", "string",
                                "number", "any", "strng", "null", 7])
_schemas = st.recursive(
    st.fixed_dictionaries({}, optional={"type": _loose_types, "description": st.text(max_size=5),
                                        "required": st.lists(st.text(max_size=3), max_size=3) | st.booleans(),
                                        "nullable": st.booleans(), "enum": st.lists(_json_leaf, max_size=3)}),
    lambda children: st.fixed_dictionaries(
        {}, optional={"type": _loose_types, "properties": st.dictionaries(st.text(max_size=4), children, max_size=3),
                      "items": children | _loose_types, "anyOf": st.lists(children, max_size=2),
                      "required": st.lists(st.text(max_size=3), max_size=3)}),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(_schemas)
def test_fuzz_normalised_schemas_are_valid_or_rejected_by_field(raw: dict) -> None:
    try:
        schema = normalize_schema(raw)
    except SchemaError as exc:
        assert exc.field.startswith("parameters")
        return
    # whatever normalize_schema returns passes the reference validator
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
