"""SchemaCheck: the compiled fast path and the Python validator give the same verdicts."""

from __future__ import annotations

import jsonschema
import pytest

from astra.servers import SchemaCheck

SCHEMA = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "minLength": 1},
        "quantity": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "object", "properties": {"bin": {"type": "integer"}}, "required": ["bin"]},
    },
    "required": ["sku", "quantity"],
    "additionalProperties": False,
}

CASES = [
    ({"sku": "A", "quantity": 2}, True),
    ({"sku": "A", "quantity": 2.0}, True),  # 2.0 is an integer in JSON Schema
    ({"sku": "A", "quantity": 0}, False),
    ({"sku": "", "quantity": 1}, False),
    ({"sku": "A"}, False),
    ({"sku": "A", "quantity": 1, "extra": 1}, False),
    ({"sku": "A", "quantity": 1, "tags": ["x", 3]}, False),
    ({"sku": "A", "quantity": 1, "where": {}}, False),
    ({"sku": "A", "quantity": True}, False),  # a boolean is not an integer
    ([], False),
]


@pytest.mark.parametrize(("instance", "valid"), CASES)
def test_fast_and_python_paths_agree(instance, valid):
    check = SchemaCheck(SCHEMA)
    slow = SchemaCheck(SCHEMA)
    slow.fast = None  # the Python validator alone
    assert (check.errors(instance) == []) is valid
    assert (slow.errors(instance) == []) is valid
    assert (check.first_error(instance) is None) is valid
    if not valid:
        assert [e.message for e in check.errors(instance)] == [e.message for e in slow.errors(instance)]


def test_errors_name_the_offending_field():
    error = SchemaCheck(SCHEMA).first_error({"sku": "A", "quantity": 1, "tags": ["x", 3]})
    assert list(error.absolute_path) == ["tags", 1] and "is not of type 'string'" in error.message


def test_invalid_schema_is_refused():
    with pytest.raises(jsonschema.SchemaError):
        SchemaCheck({"type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}})


def test_fast_path_is_used_when_installed():
    pytest.importorskip("jsonschema_rs")
    assert SchemaCheck(SCHEMA).fast is not None


PATTERNS = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^(a+)+$"},
        "tag": {"type": "string", "pattern": "^(?=t)t[0-9]+$"},  # lookahead: the bounded backtracking engine
    },
    "patternProperties": {"^x-[a-z]+$": {"type": "integer"}},
    "additionalProperties": False,
}


@pytest.mark.parametrize("instance", [
    {"code": "aaa"}, {"code": "ab"}, {"code": "a" * 27 + "!"}, {"tag": "t12"}, {"tag": "u12"},
    {"x-ok": 1}, {"x-ok": "one"}, {"x-9": 1}, {"zz": 1, "yy": 2}, {"code": "aaa", "x-abc": 2, "tag": "t1"},
])
def test_patterns_run_in_linear_time_with_the_python_messages(instance):
    pytest.importorskip("jsonschema_rs")
    check = SchemaCheck(PATTERNS)
    python = jsonschema.Draft202012Validator(PATTERNS)
    pathological = instance.get("code") == "a" * 27 + "!"
    expected = None if pathological else sorted(e.message for e in python.iter_errors(instance))
    got = sorted(e.message for e in check.errors(instance))
    assert (check.first_error(instance) is None) is (got == [])
    if expected is not None:  # Python's re would take ~10 s on the 27-character one
        assert got == expected
    else:
        assert got == ["'aaaaaaaaaaaaaaaaaaaaaaaaaaa!' does not match '^(a+)+$'"]
