"""Gold replies for the bundled QA set, served by a deterministic ScriptedModel (the 'oracle').

The oracle reads each prompt (which stage asks, about which question or step) and answers
as a careful model would. ``overrides`` replace the reply of one stage for one question with
a malformed or wrong one, to exercise the drop paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from astra.client import ScriptedModel
from astra.records import ChatMessage
from astra.synthesis.environments import (
    _decompose,
    _necessity,
    _qa,
    _synthesize,
    _verify,
)


def tool(name: str, description: str, params: dict[str, str], code: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {p: {"type": t} for p, t in params.items()},
            "required": list(params),
        },
        "code": code,
    }


MULTIPLY = tool(
    "multiply", "Multiply two numbers.", {"a": "number", "b": "number"}, "def multiply(a, b):\n    return a * b\n"
)
ADD = tool(
    "add_numbers", "Add two numbers.", {"a": "number", "b": "number"}, "def add_numbers(a, b):\n    return a + b\n"
)
ADD_SUM = tool("sum_numbers", "Add two numbers together.", {"a": "number", "b": "number"},
               "def sum_numbers(a, b):\n    total = a + b\n    return total\n")
GRAMS_TO_KG = tool("grams_to_kilograms", "Convert grams to kilograms.", {"grams": "number"},
                   "def grams_to_kilograms(grams):\n    return grams / 1000\n")
MILES_TO_KM = tool("miles_to_km", "Convert a distance in miles to kilometres.", {"miles": "number"},
                   "def miles_to_km(miles):\n    return miles * 1.609344\n")
ADD_DAYS = tool("add_days", "Add a number of days to an ISO date (YYYY-MM-DD).", {"date": "string", "days": "integer"},
                "import datetime\n\ndef add_days(date, days):\n    d = datetime.date.fromisoformat(date)\n"
                "    return (d + datetime.timedelta(days=days)).isoformat()\n")
WEEKDAY = tool(
    "weekday_of",
    "The English weekday name of an ISO date.",
    {"date": "string"},
    "import datetime\n\ndef weekday_of(date):\n    return datetime.date.fromisoformat(date).strftime('%A')\n",
)
CAPITAL = tool(
    "capital_of",
    "The capital city of a country given its ISO 3166 alpha-2 code.",
    {"code": "string"},
    "CAPITALS = {'JP': 'Tokyo', 'FR': 'Paris', 'DE': 'Berlin', 'IT': 'Rome', 'ES': 'Madrid', 'BR': 'Brasilia'}\n\n"
    "def capital_of(code):\n    code = code.strip().upper()\n    if code not in CAPITALS:\n"
    "        raise ValueError(f'unknown country code {code}')\n    return CAPITALS[code]\n",
)
REVERSE_UPPER = tool("reverse_upper", "Reverse a string and convert it to upper case.", {"text": "string"},
                     "def reverse_upper(text):\n    return text[::-1].upper()\n")
PERCENT_OFF = tool("apply_discount", "Price after a percentage discount.", {"price": "number", "percent": "number"},
                   "def apply_discount(price, percent):\n    return round(price * (1 - percent / 100), 2)\n")
ADD_TAX = tool("add_tax", "Price after adding a percentage sales tax.", {"price": "number", "percent": "number"},
               "def add_tax(price, percent):\n    return round(price * (1 + percent / 100), 2)\n")
TRAVEL_TIME = tool("travel_time_hours", "Hours needed to drive a distance at a constant speed.",
                   {"distance_km": "number", "speed_kmh": "number"},
                   "def travel_time_hours(distance_km, speed_kmh):\n    return distance_km / speed_kmh\n")
DAYS_BETWEEN = tool(
    "days_between",
    "Number of days from one ISO date to another.",
    {"start": "string", "end": "string"},
    "from datetime import date\n\ndef days_between(start, end):\n"
    "    return (date.fromisoformat(end) - date.fromisoformat(start)).days\n",
)
WHOLE_WEEKS = tool("whole_weeks", "Number of whole weeks in a number of days.", {"days": "integer"},
                   "def whole_weeks(days):\n    return days // 7\n")
COUNT_VOWELS = tool("count_vowels", "Count the vowels a, e, i, o, u in a word.", {"word": "string"},
                    "def count_vowels(word):\n    return sum(1 for ch in word.lower() if ch in 'aeiou')\n")
SQUARE = tool("square", "The square of a number.", {"x": "number"}, "def square(x):\n    return x * x\n")


def step(sid: str, question: str, answer: str, deps: Sequence[str] = (), parallel: bool = False,
         tool_def: dict[str, Any] | None = None, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": sid, "sub_question": question, "sub_answer": answer, "depends_on": list(deps),
            "is_parallel": parallel, "tool": tool_def, "arguments": args or {}}


GOLD: dict[str, list[dict[str, Any]]] = {
    "A recipe needs 250 grams": [
        step(
            "s1",
            "How many grams of flour do 6 loaves need at 250 grams each?",
            "1500",
            tool_def=MULTIPLY,
            args={"a": 250, "b": 6},
        ),
        step("s2", "How many kilograms is 1500 grams?", "1.5", ["s1"], tool_def=GRAMS_TO_KG, args={"grams": 1500}),
    ],
    "Alice ran 5 miles": [
        step(
            "s1", "How many kilometres is 5 miles?", "8.04672", parallel=True, tool_def=MILES_TO_KM, args={"miles": 5}
        ),
        step(
            "s2", "How many kilometres is 3 miles?", "4.828032", parallel=True, tool_def=MILES_TO_KM, args={"miles": 3}
        ),
        step(
            "s3",
            "What is 8.04672 + 4.828032?",
            "12.874752",
            ["s1", "s2"],
            tool_def=ADD,
            args={"a": 8.04672, "b": 4.828032},
        ),
    ],
    "A meeting was scheduled": [
        step(
            "s1",
            "Which date is 45 days after 2024-01-15?",
            "2024-02-29",
            tool_def=ADD_DAYS,
            args={"date": "2024-01-15", "days": 45},
        ),
        step(
            "s2",
            "Which day of the week is 2024-02-29?",
            "Thursday",
            ["s1"],
            tool_def=WEEKDAY,
            args={"date": "2024-02-29"},
        ),
    ],
    "Take the capital": [
        step(
            "s1", "What is the capital of the country with ISO code JP?", "Tokyo", tool_def=CAPITAL, args={"code": "JP"}
        ),
        step(
            "s2",
            "What is 'Tokyo' reversed in upper case?",
            "OYKOT",
            ["s1"],
            tool_def=REVERSE_UPPER,
            args={"text": "Tokyo"},
        ),
    ],
    "A jacket costs 80 USD": [
        step(
            "s1",
            "What is 80 USD after a 15% discount?",
            "68.0",
            tool_def=PERCENT_OFF,
            args={"price": 80, "percent": 15},
        ),
        step(
            "s2",
            "What is 68 USD after adding 8% sales tax?",
            "73.44",
            ["s1"],
            tool_def=ADD_TAX,
            args={"price": 68, "percent": 8},
        ),
    ],
    "A car drives 150 km": [
        step(
            "s1",
            "How many hours does 150 km at 60 km/h take?",
            "2.5",
            parallel=True,
            tool_def=TRAVEL_TIME,
            args={"distance_km": 150, "speed_kmh": 60},
        ),
        step(
            "s2",
            "How many hours does 90 km at 45 km/h take?",
            "2",
            parallel=True,
            tool_def=TRAVEL_TIME,
            args={"distance_km": 90, "speed_kmh": 45},
        ),
        step("s3", "What is 2.5 + 2?", "4.5", ["s1", "s2"], tool_def=ADD_SUM, args={"a": 2.5, "b": 2}),
    ],
    "How many whole weeks": [
        step(
            "s1",
            "How many days are there from 2023-03-01 to 2023-12-25?",
            "299",
            tool_def=DAYS_BETWEEN,
            args={"start": "2023-03-01", "end": "2023-12-25"},
        ),
        step("s2", "How many whole weeks are in 299 days?", "42", ["s1"], tool_def=WHOLE_WEEKS, args={"days": 299}),
    ],
    "Count the vowels": [
        step(
            "s1",
            "How many vowels (a, e, i, o, u) does 'synthesis' have?",
            "2",
            tool_def=COUNT_VOWELS,
            args={"word": "synthesis"},
        ),
        step("s2", "What is 2 squared?", "4", ["s1"], tool_def=SQUARE, args={"x": 2}),
    ],
}

Reply = Callable[[str], str | None]


def _gold_for(text: str) -> tuple[str, list[dict[str, Any]]] | None:
    for key, steps in GOLD.items():
        if key in text:
            return key, steps
    return None


def decomposition_reply(steps: list[dict[str, Any]]) -> str:
    hops: dict[str, int] = {}
    for s in steps:  # gold steps are listed in dependency order
        hops[s["id"]] = 1 + max((hops[d] for d in s["depends_on"]), default=0)
    return json.dumps(
        {
            "steps": [
                {
                    "hop": hops[s["id"]],
                    **{k: s[k] for k in ("id", "sub_question", "depends_on", "is_parallel", "sub_answer")},
                }
                for s in steps
            ]
        }
    )


def tool_reply(s: dict[str, Any]) -> str:
    return json.dumps({**s["tool"], "arguments": s["arguments"]})


def find_step(text: str) -> dict[str, Any] | None:
    for steps in GOLD.values():
        for s in steps:
            if f"Step: {s['sub_question']}\n" in text:
                return s
    return None


def oracle(overrides: dict[tuple[str, str], str | Callable[[int], str]] | None = None):
    """A reply function for ScriptedModel: stage-aware gold answers, with per-(stage, key) overrides.

    An override value may be a callable taking the attempt number (0 for the first ask of that
    stage+key) so that a test can script 'wrong, then right'.
    """
    overrides = dict(overrides or {})
    seen: dict[tuple[str, str], int] = {}

    def reply(messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> str:
        system = messages[0].content or ""
        text = "\n".join(m.content or "" for m in messages if m.role == "user")
        first_user = next(m.content or "" for m in messages if m.role == "user")
        if system == _qa.SYSTEM:
            stage, key = "qa", first_user
        elif system == _decompose.SYSTEM:
            stage, key = "decompose", (_gold_for(first_user) or ("?",))[0]
        elif system == _necessity.SYSTEM:
            stage, key = "necessity", (_gold_for(first_user) or ("?",))[0]
        elif system == _verify.SYSTEM:
            stage, key = "verify", (_gold_for(first_user) or ("?",))[0]
        elif system == _synthesize.SYSTEM and first_user.startswith("Generalise"):
            stage, key = "scale", first_user
        elif system == _synthesize.SYSTEM and "These tools do the same thing" in first_user:
            stage, key = "merge", first_user
        elif system == _synthesize.SYSTEM:
            found = find_step(first_user)
            stage, key = "synthesize", found["sub_question"] if found else "?"
        else:
            raise AssertionError(f"oracle: unknown stage for system prompt {system[:60]!r}")
        n = seen.get((stage, key), 0)
        seen[(stage, key)] = n + 1
        for (o_stage, o_key), value in overrides.items():
            if o_stage == stage and o_key in key:
                out = value(n) if callable(value) else value
                if out is not None:
                    return out
        return _gold(stage, key, first_user, text)

    return reply


def _gold(stage: str, key: str, first_user: str, text: str) -> str:
    if stage == "decompose":
        return decomposition_reply(GOLD[key])
    if stage == "necessity":
        return json.dumps(
            {"steps": [{"id": s["id"], "needs_tool": True, "reason": "a computation"} for s in GOLD[key]]}
        )
    if stage == "verify":
        return verify_reply(first_user)
    if stage == "synthesize":
        found = find_step(first_user)
        assert found is not None, first_user
        return tool_reply(found)
    if stage in ("scale", "merge"):
        return "I cannot do that."  # no valid JSON: a failed reply
    raise AssertionError(f"oracle: no gold reply for {stage}")


def verify_reply(prompt: str, **overrides: Any) -> str:
    """A verification judge's reply: the requested shape with every item 1 (``overrides`` patch
    fields of every item: ``atomic=0`` ...; ``final={...}`` replaces the final verdict)."""
    shape = json.loads(prompt[prompt.rindex("Reply as ") + len("Reply as "):])
    final = overrides.pop("final", None)
    for section in ("dependencies", "steps"):
        for item in shape[section]:
            item.update({k: v for k, v in overrides.items() if k in item}, reason="fine")
    shape["final"] = final or {"consistent": 1, "reason": "the last hop gives it"}
    return json.dumps(shape)


def oracle_model(overrides: dict[tuple[str, str], Any] | None = None, n: int = 2000) -> ScriptedModel:
    fn = oracle(overrides)
    return ScriptedModel([fn] * n, name="envs-oracle")


