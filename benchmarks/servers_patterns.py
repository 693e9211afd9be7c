"""Benchmark: a catastrophic schema ``pattern`` (``^(a+)+$``) against arguments of growing length.

Run by hand: ``.venv/bin/python benchmarks/servers_patterns.py [--max-python 24]``.
Baseline: the plain ``jsonschema`` validator, whose ``pattern`` is Python's backtracking ``re``
(the time doubles with every character). Measured: ``astra.servers.SchemaCheck`` (what every
tool call's arguments and outputs, and the client harness's argument check, go through), whose
patterns run on jsonschema-rs's linear-time regex engine. Both explain the failure with the
same message. Prints the times side by side and the ratio at the longest argument both ran.
"""

from __future__ import annotations

import argparse
import time

import jsonschema

from astra.servers import SchemaCheck

SCHEMA = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}}


def timed(check: object, n: int) -> tuple[float, str]:
    instance = {"code": "a" * n + "!"}
    start = time.perf_counter()
    if isinstance(check, SchemaCheck):
        error = check.first_error(instance)
    else:
        error = jsonschema.exceptions.best_match(check.iter_errors(instance))  # type: ignore[attr-defined]
    return time.perf_counter() - start, error.message if error is not None else ""


def main(max_python: int) -> None:
    python = jsonschema.Draft202012Validator(SCHEMA)
    linear = SchemaCheck(SCHEMA)
    print(f"{'length':>8}  {'python re (s)':>14}  {'SchemaCheck (s)':>16}  ratio")
    ratio = None
    for n in (*range(16, max_python + 1, 2), 27, 1_000, 100_000):
        linear_s, linear_msg = timed(linear, n)
        if n <= max_python:
            python_s, python_msg = timed(python, n)
            assert python_msg == linear_msg, (python_msg, linear_msg)
            ratio = python_s / linear_s
            print(f"{n + 1:>8}  {python_s:>14.4f}  {linear_s:>16.6f}  {ratio:,.0f}x")
        else:
            print(f"{n + 1:>8}  {'(skipped)':>14}  {linear_s:>16.6f}")
    print(f"at {max_python + 1} characters SchemaCheck is {ratio:,.0f}x faster; Python's re doubles per character "
          f"(~{2 ** (27 - max_python):d}x more at 28)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-python", type=int, default=24, help="longest run of a's given to Python's re")
    main(parser.parse_args().max_python)
