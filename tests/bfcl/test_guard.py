"""A model's arguments cannot run unbounded in the astra class servers' process (red team R3-15):
``number`` arguments reach BFCL's code as floats, MathAPI's precision is bounded and set per call."""

from __future__ import annotations

import decimal
import functools
from typing import Any

import anyio
import mpmath  # pyright: ignore[reportMissingTypeStubs]

from astra.bfcl._data import backend_class
from astra.bfcl._servers import MAX_PRECISION_DIGITS, astra_backend_server, bounded_method_name
from astra.records import ToolErrorKind


def test_model_arguments_that_would_hold_the_gil_are_quick_tool_errors_and_other_episodes_answer() -> None:
    server, _slot = astra_backend_server("MathAPI")
    runtime = server.runtime
    runtime.call_timeout_s = 60.0  # before the fix power(10, 3000000) ran into it (kind timeout)
    attacker, victim = runtime.new_episode(), runtime.new_episode()
    done: list[tuple[str, Any]] = []

    async def attack(name: str, arguments: dict[str, Any]) -> None:
        done.append((name, await runtime.call(name, arguments, episode_id=attacker)))

    async def other_episode() -> None:
        done.append(("add", await runtime.call("add", {"a": 1, "b": 2}, episode_id=victim)))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(attack, "power", {"base": 10, "exponent": 3_000_000})
            tg.start_soon(attack, "logarithm", {"value": 10, "base": 2, "precision": 10**8})
            tg.start_soon(attack, "square_root", {"number": 2, "precision": 10**8})
            tg.start_soon(attack, "square_root", {"number": 2, "precision": 1e8})  # "integer" in JSON Schema
            tg.start_soon(other_episode)

    anyio.run(main)
    assert len(done) == 5
    outcomes = dict(done)
    assert set(outcomes) == {"power", "logarithm", "square_root", "add"}
    power = outcomes["power"]
    assert not power.ok and power.error_kind == ToolErrorKind.exception and "OverflowError" in (power.error or "")
    assert {k: type(v) for k, v in power.arguments.items()} == {"base": float, "exponent": float}
    for name, refused in done:
        if name not in ("logarithm", "square_root"):
            continue
        assert not refused.ok and refused.error_kind == ToolErrorKind.exception
        assert f"precision must be between 1 and {MAX_PRECISION_DIGITS} digits" in (refused.error or "")
    assert outcomes["add"].ok and outcomes["add"].value == {"result": 3.0}
    # the attacker's episode is still usable (no call timed out)
    assert runtime.episode(attacker).unusable is None
    after = anyio.run(functools.partial(runtime.call, "power", {"base": 2, "exponent": 10}, episode_id=attacker))
    assert after.ok and after.value == {"result": 1024.0}
    dps = mpmath.mp.dps
    anyio.run(functools.partial(runtime.call, "logarithm", {"value": 8, "base": 2, "precision": 50}, episode_id=victim))
    assert mpmath.mp.dps == dps  # a served call leaves the process's precision as it was


def test_math_precision_is_per_call_and_does_not_leak_into_the_process() -> None:
    server, _slot = astra_backend_server("MathAPI")
    math_api = server.runtime.instance(server.runtime.new_episode())
    assert type(math_api) is backend_class("MathAPI")  # BFCL's checker compares types with its own objects

    def logarithm(value: float, base: float, precision: int) -> Any:  # what the server calls
        return getattr(math_api, bounded_method_name("logarithm"))(value, base, precision)

    def square_root(number: float, precision: int) -> Any:
        return getattr(math_api, bounded_method_name("square_root"))(number, precision)

    dps_before, prec_before = mpmath.mp.dps, decimal.getcontext().prec
    fine = logarithm(8.0, 2.0, 40)["result"]
    assert mpmath.mp.dps == dps_before  # BFCL's method assigns mpmath.mp.dps = 40; restored after the call
    assert mpmath.nstr(fine, 40) == "3.0"
    third = logarithm(10.0, 3.0, 40)["result"]
    with mpmath.workdps(60):
        exact = mpmath.log(10) / mpmath.log(3)
    assert abs(third - exact) < mpmath.mpf(10) ** -35  # computed at 40 digits, not the process's 15
    root = square_root(2.0, 5)["result"]
    assert root == decimal.Decimal("1.4142") and decimal.getcontext().prec == prec_before
    assert square_root(2.0, MAX_PRECISION_DIGITS)["result"].adjusted() == 0
    assert mpmath.mp.dps == dps_before and decimal.getcontext().prec == prec_before
    # BFCL's own method, as its checker runs it, leaves its precision in the process
    try:
        math_api.logarithm(8.0, 2.0, 40)
        assert mpmath.mp.dps == 40
    finally:
        mpmath.mp.dps = dps_before
