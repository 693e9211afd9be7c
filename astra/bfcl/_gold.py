"""``scripted:gold``: a deterministic model that replays BFCL's ground truth through our MCP servers.

Per turn it makes all of the turn's ground-truth calls in one reply (one BFCL step, as
the ground truth is executed: some turns hold more calls than BFCL's 20-step limit), which
the episode loop executes in order, then answers in text, which ends the turn. Turns whose ground truth is empty (the
function is missing, or a parameter is) get only the text answer.
"""

from __future__ import annotations

import json

from astra.bfcl._calls import parse_call
from astra.bfcl._data import BfclEntry, method_parameters
from astra.client import ScriptedModel
from astra.records import ChatMessage, ToolCall

GOLD_MODEL = "scripted:gold"


def gold_replies(entry: BfclEntry) -> list[ChatMessage | str]:
    signatures: dict[str, tuple[str, ...]] = {}
    for class_name in entry.involved_classes:
        signatures.update(method_parameters(class_name))
    replies: list[ChatMessage | str] = []
    for turn_index, turn in enumerate(entry.ground_truth):
        if turn:
            calls = []
            for call_index, call in enumerate(turn):
                name, arguments = parse_call(call, signatures)
                calls.append(ToolCall(id=f"gold_{turn_index}_{call_index}", name=name, arguments=json.dumps(arguments)))
            replies.append(ChatMessage(role="assistant", content=None, tool_calls=calls))
        replies.append("Done." if turn else "I cannot do that with the functions and information I have.")
    return replies


def gold_model(entry: BfclEntry) -> ScriptedModel:
    """A fresh scripted model holding ``entry``'s ground truth (a model is per entry: it counts replies)."""
    return ScriptedModel(gold_replies(entry), name=f"gold:{entry.id}")
