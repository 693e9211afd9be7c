"""One certification of an emitted server: the pipeline's certificate and `astra env validate`
are one replay with one verdict, checked with the reward module's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra.records import EnvironmentSpec
from astra.servers import Certification, CheckKind, certify_emitted, emit, validate_emitted
from astra.synthesis.environments._emit import certify
from astra.synthesis.environments._models import Certificate

pytestmark = pytest.mark.anyio


def _sabotaged(inventory: EnvironmentSpec, tool: str, source: str) -> EnvironmentSpec:
    tools = [
        t.model_copy(update={"source": source}) if t.spec.name == tool else t for t in inventory.tools
    ]
    return inventory.model_copy(update={"tools": tools})


def _verdict(report: Certification) -> tuple[bool, list[str], float | None]:
    return report.ok, [c.name for c in report.failed], report.reward


async def test_both_entry_points_pass_a_sound_server(inventory: EnvironmentSpec, emitted: Path) -> None:
    certificate = await certify(inventory, emitted)
    validated = await validate_emitted(emitted)
    assert _verdict(certificate) == _verdict(validated) == (True, [], 1.0)
    assert certificate.calls == certificate.passed == 5 and certificate.failures == []
    assert [c.name for c in certificate.checks] == [c.name for c in validated.checks]
    assert {c.kind for c in validated.checks} == {CheckKind.LISTING, CheckKind.RESET, CheckKind.CALL, CheckKind.STATE}


async def test_both_entry_points_fail_a_broken_server(inventory: EnvironmentSpec, tmp_path: Path) -> None:
    # the stock value is off: its reference call reproduces neither the expected result nor the sub-answer
    broken = _sabotaged(inventory, "stock_value", "def stock_value(state):\n    return 1.0\n")
    directory = emit(broken, tmp_path / "broken")
    certificate = await certify(broken, directory)
    validated = await validate_emitted(directory)
    assert _verdict(certificate) == _verdict(validated)
    assert not certificate.ok
    assert certificate.failures == ['verifier v5 (stock_value): expected 354.0, got {"result": 1.0}']
    assert certificate.passed == 4 and certificate.reward is not None and certificate.reward < 1.0


async def test_a_server_that_does_not_start_fails_both(inventory: EnvironmentSpec, tmp_path: Path) -> None:
    directory = emit(inventory, tmp_path / "dead")
    (directory / "server.py").write_text("raise SystemExit(3)\n")
    certificate = await certify(inventory, directory, timeout_s=30)
    validated = await validate_emitted(directory, timeout_s=30)
    assert not certificate.ok and not validated.ok
    assert certificate.error and validated.error and certificate.failures[0] == certificate.error


async def test_a_wrong_sub_answer_fails_without_an_expected_result(inventory: EnvironmentSpec, tmp_path: Path) -> None:
    # the sub-answer rule (answer_in_result) decides when a verifier gives no expected result
    verifiers = [
        v.model_copy(update={"expected_result": None, "expected_answer": 41}) if v.id == "v1" else v
        for v in inventory.verifiers
    ]
    directory = emit(inventory.model_copy(update={"verifiers": verifiers}), tmp_path / "answer")
    report = await certify_emitted(directory)
    assert [c.name for c in report.failed] == ["verifier v1 (get_item)"]
    assert "41" in report.failed[0].detail


async def test_no_reference_call_is_no_certificate(inventory: EnvironmentSpec, tmp_path: Path) -> None:
    spec = inventory.model_copy(update={"verifiers": []})
    report = await certify_emitted(emit(spec, tmp_path / "none"))
    assert not report.ok and [c.kind for c in report.failed] == [CheckKind.REPLAY] and report.reward is None


def test_stored_certificates_round_trip_and_old_summaries_load() -> None:
    assert Certificate is Certification
    old_ok = {"transport": "stdio", "calls": 3, "passed": 3, "seconds": 1.2, "failures": []}
    old_bad = {"transport": "stdio", "calls": 3, "passed": 2, "seconds": 1.2, "failures": ["v2: wrong"]}
    assert Certification.model_validate(old_ok).ok
    bad = Certification.model_validate(old_bad)
    assert not bad.ok and bad.failures == ["v2: wrong"]
    again = Certification.model_validate(json.loads(bad.model_dump_json()))
    assert again == bad and again.failures == ["v2: wrong"]
