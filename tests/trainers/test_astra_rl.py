"""ASTRA-RL-1k style rows -> environments: tools served, reward read from sub_qa_dict, certified
with reference calls (oracle 1.0 through the emitted server), refused without them."""

from __future__ import annotations

import json

import pytest

from astra.servers import compute_score, emit
from astra.trainers import EpisodePool, ExportEnvironment, samples, stdio_launch
from astra.trainers.astra_rl import import_row
from astra.trainers.hardening import harden

FINDER = """def reservation_finder(passenger_name: str, origin: str):
    table = {("mary smith", "bengaluru"): "RES987654"}
    found = table.get((passenger_name.lower(), origin.lower()))
    return f"Reservation ID: {found}" if found else "No reservation found"
"""
FEE = """def baggage_fee_calculator(reservation_id: str, total_bags: int):
    if reservation_id != "RES987654":
        return "Unknown reservation"
    return f"Extra charge: \\u20b9{300 * (total_bags - 1)}"
"""
LOOKALIKE = """def seat_selector(reservation_id: str):
    return "Seat 12A"
"""


def _tool(name, description, props, required):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


ROW = {
    "prompt": [
        {
            "role": "user",
            "content": "## some information related to the user\n"
            + json.dumps({"background": "I'm Mary Smith, flying from Bengaluru with extra luggage."}, indent=1)
            + "\nI need 3 bags in total: what is the extra charge?",
        }
    ],
    "tool_schema": json.dumps(
        [
            _tool(
                "reservation_finder",
                "Find a reservation.",
                {
                    "passenger_name": {"type": "string", "description": "name"},
                    "origin": {"type": "string", "description": "city"},
                },
                ["passenger_name", "origin"],
            ),
            _tool(
                "baggage_fee_calculator",
                "Extra baggage fee.",
                {
                    "reservation_id": {"type": "string", "description": "id"},
                    "total_bags": {"type": "integer", "description": "bags"},
                },
                ["reservation_id", "total_bags"],
            ),
            _tool(
                "seat_selector",
                "Pick a seat.",
                {"reservation_id": {"type": "string", "description": "id"}},
                ["reservation_id"],
            ),
        ]
    ),
    "tool_dict": json.dumps({"reservation_finder": FINDER, "baggage_fee_calculator": FEE, "seat_selector": LOOKALIKE}),
    "sub_qa_dict": json.dumps(
        {"reservation_finder": ["Reservation ID: RES987654"], "baggage_fee_calculator": ["Extra charge: ₹600"]}
    ),
}
CALLS = {
    "reservation_finder": [{"passenger_name": "Mary Smith", "origin": "Bengaluru"}],
    "baggage_fee_calculator": [{"reservation_id": "RES987654", "total_bags": 3}],
}


def test_row_fields_are_read() -> None:
    imported = import_row(ROW, index=7)
    assert imported.question == "I need 3 bags in total: what is the extra charge?"
    assert imported.background.startswith("I'm Mary Smith")
    assert [t.spec.name for t in imported.spec.tools] == [
        "reservation_finder",
        "baggage_fee_calculator",
        "seat_selector",
    ]
    assert [(v.tool, v.expected_answer) for v in imported.spec.verifiers] == [
        ("reservation_finder", "Reservation ID: RES987654"),
        ("baggage_fee_calculator", "Extra charge: ₹600"),
    ]
    assert not imported.certifiable and "no reference call" in imported.problems[0]
    # the reward reads sub_qa_dict directly (no exception)
    assert compute_score("astra_rl", "no calls", ROW["sub_qa_dict"]) == 0.0
    with pytest.raises(ValueError, match="tool_dict"):
        import_row({**ROW, "tool_dict": "{not json"}, index=3)


@pytest.mark.anyio
async def test_with_reference_calls_it_is_certified_and_exported(tmp_path) -> None:
    imported = import_row(ROW, index=7, reference_calls=CALLS)
    assert imported.certifiable
    server_dir = emit(imported.spec, tmp_path / imported.spec.name)
    env = ExportEnvironment(
        spec=imported.spec,
        question=imported.question,
        answer="Extra charge: ₹600",
        server_dir=str(server_dir),
        background=imported.background,
    )
    pool = EpisodePool([(env.name, stdio_launch(server_dir))])
    try:
        cert = await harden(env, pool)
    finally:
        pool.close()
    assert cert.ok, cert.failures
    sample = samples([env])[0]
    assert sample.prompt[1]["content"].startswith("## some information related to the user\n")
    assert sample.prompt[1]["content"].endswith(imported.question)
