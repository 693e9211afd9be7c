"""Build the bundled judge-calibration set: trajectories with known defects, every item labelled.

    PYTHONPATH=. python scripts/build_calibration_set.py  # writes astra/synthesis/trajectories/data/calibration.jsonl

Five tool domains x nine kinds (one clean control + eight defects) + two no-call controls.
Every item the judge scores (each call, tool result, intermediate plan, result batch, the
first response, the answer's relevance and summary) carries a label on the original ASTRA's
scale and a justification. The builder checks that labels cover exactly the items the judge
sees and agree with every rule that can decide an item.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from astra.records import ChatMessage, Step, Task, ToolCall, Trajectory
from astra.synthesis.trajectories._calibration import (
    OUT_PATH,
    CalibrationCase,
    Defect,
    ItemLabel,
)
from astra.synthesis.trajectories._reward import itemise, rule_items


def fn(name: str, description: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": list(props)}}}


S, N = {"type": "string"}, {"type": "number"}

DOMAINS: dict[str, dict[str, Any]] = {
    "weather": {
        "server": "wx",
        "tools": [
            fn("search_city", "Find a city; returns its coordinates.", {"city_name": S}),
            fn("get_weather", "Current weather at coordinates.", {"latitude": N, "longitude": N}),
        ],
        "query": "What is the weather in Lisbon right now?",
        "query_zh": "里斯本现在的天气怎么样？",
        "plan": "I will look up Lisbon's coordinates, then get the current weather there.",
        "calls": [
            ("search_city", {"city_name": "Lisbon"}, {"latitude": 38.72, "longitude": -9.14}),
            ("get_weather", {"latitude": 38.72, "longitude": -9.14}, {"temperature_c": 21, "sky": "sunny"}),
        ],
        "invented": ("get_weather", {"latitude": 40.0, "longitude": -8.0}, {"temperature_c": 17, "sky": "cloudy"}),
        "error": "city service unavailable: upstream returned 503",
        "answer": "It is sunny in Lisbon right now, at 21 °C.",
        "answer_zh": "里斯本现在晴天，气温21摄氏度。",
        "answer_en_for_zh": "It is sunny in Lisbon right now, at 21 °C.",
        "wrong": "It is raining in Lisbon right now, at 12 °C.",
        "ungrounded": "Lisbon is usually mild in this season, around 25 °C with a light breeze from the ocean.",
        "invented_answer": "It is cloudy in Lisbon, at 17 °C.",
        "partial": "Lisbon is at latitude 38.72, longitude -9.14.",
        "url": "It is sunny in Lisbon right now, at 21 °C (source: https://weather.example.com/lisbon/today).",
    },
    "currency": {
        "server": "fx",
        "tools": [
            fn("get_rate", "Exchange rate from base to quote currency.", {"base": S, "quote": S}),
            fn("convert", "Multiply an amount by a rate.", {"amount": N, "rate": N}),
        ],
        "query": "How much is 500 EUR in US dollars today?",
        "query_zh": "今天500欧元能换多少美元？",
        "plan": "First I get today's EUR to USD rate, then convert 500 EUR with it.",
        "calls": [
            ("get_rate", {"base": "EUR", "quote": "USD"}, {"rate": 1.0842}),
            ("convert", {"amount": 500, "rate": 1.0842}, {"result": 542.1}),
        ],
        "invented": ("convert", {"amount": 500, "rate": 1.1}, {"result": 550.0}),
        "error": "rate service error: quota exceeded",
        "answer": "500 EUR is 542.10 USD at today's rate of 1.0842.",
        "answer_zh": "按今天1.0842的汇率，500欧元等于542.10美元。",
        "answer_en_for_zh": "500 EUR is 542.10 USD at today's rate of 1.0842.",
        "wrong": "500 EUR is 462.50 USD at today's rate of 0.925.",
        "ungrounded": "The euro is usually worth a bit more than the dollar, so roughly 560 USD.",
        "invented_answer": "500 EUR is 550 USD.",
        "partial": "Today's EUR to USD rate is 1.0842.",
        "url": "500 EUR is 542.10 USD at today's rate of 1.0842 (see https://fx.example.org/eur-usd).",
    },
    "orders": {
        "server": "shop",
        "tools": [
            fn("get_user", "Find a customer by email; returns the user id.", {"email": S}),
            fn("list_orders", "A customer's orders with their status.", {"user_id": S}),
        ],
        "query": "Has my order shipped? My account email is ana.silva@example.com.",
        "query_zh": "我的订单发货了吗？我的账户邮箱是 ana.silva@example.com。",
        "plan": "I'll find your account by email, then check the status of your orders.",
        "calls": [
            ("get_user", {"email": "ana.silva@example.com"}, {"user_id": "u-829"}),
            ("list_orders", {"user_id": "u-829"}, {"orders": [{"id": "o-5531", "status": "shipped"}]}),
        ],
        "invented": ("list_orders", {"user_id": "u-1001"}, {"orders": [{"id": "o-17", "status": "processing"}]}),
        "error": "account lookup failed: database timeout",
        "answer": "Yes: your order o-5531 has shipped.",
        "answer_zh": "是的，您的订单 o-5531 已经发货。",
        "answer_en_for_zh": "Yes: your order o-5531 has shipped.",
        "wrong": "No, your order o-5531 is still being processed.",
        "ungrounded": "Orders usually ship within two business days, so it has most likely shipped.",
        "invented_answer": "Your order o-17 is still processing.",
        "partial": "I found your account (user u-829).",
        "url": "Yes: your order o-5531 has shipped. Track it at https://track.example.com/o-5531.",
    },
    "docs": {
        "server": "docs",
        "tools": [
            fn("search_docs", "Search the documentation; returns titles and URLs.", {"query": S}),
            fn("fetch_page", "The text of a documentation page.", {"url": S}),
        ],
        "query": "How do I rotate an API key? Give me the steps from the docs.",
        "query_zh": "如何轮换API密钥？请根据文档给出步骤。",
        "plan": "I'll search the docs for key rotation, then read the page I find.",
        "calls": [
            (
                "search_docs",
                {"query": "rotate API key"},
                {"results": [{"title": "Rotating keys", "url": "https://docs.example.com/keys/rotate"}]},
            ),
            (
                "fetch_page",
                {"url": "https://docs.example.com/keys/rotate"},
                {"text": "1. Create a new key. 2. Update your clients. 3. Revoke the old key."},
            ),
        ],
        "invented": ("fetch_page", {"url": "https://docs.example.com/security"}, {"text": "Security overview."}),
        "error": "search index is rebuilding, try later (503)",
        "answer": "From https://docs.example.com/keys/rotate: 1. create a new key, 2. update your clients, "
        "3. revoke the old key.",
        "answer_zh": "根据 https://docs.example.com/keys/rotate ："
                     "第一步创建新密钥，第二步更新客户端，第三步撤销旧密钥。",
        "answer_en_for_zh": "From https://docs.example.com/keys/rotate: 1. create a new key, 2. update your clients, "
        "3. revoke the old key.",
        "wrong": "From https://docs.example.com/keys/rotate: revoke the old key first, then create a new one.",
        "ungrounded": "Usually you open the dashboard, click Regenerate, and the old key stops working at once.",
        "invented_answer": "The security overview page does not describe key rotation.",
        "partial": "The page https://docs.example.com/keys/rotate describes key rotation.",
        "url": "See https://docs.example.com/keys/rotate-v2: create a new key, update your clients, "
               "revoke the old key.",
    },
    "flights": {
        "server": "air",
        "tools": [
            fn("search_flights", "Flights between two airports on a date.", {"origin": S, "destination": S, "date": S}),
            fn("get_baggage", "Baggage allowance of a flight.", {"flight_id": S}),
        ],
        "query": "Find me the cheapest flight from LIS to OPO on 2026-12-14 and tell me its baggage allowance.",
        "query_zh": "帮我找2026-12-14从LIS到OPO最便宜的航班，并告诉我它的行李额度。",
        "plan": "I'll search flights LIS to OPO on 2026-12-14, then check the cheapest one's baggage allowance.",
        "calls": [
            (
                "search_flights",
                {"origin": "LIS", "destination": "OPO", "date": "2026-12-14"},
                {"flights": [{"flight_id": "TP1944", "price_eur": 49}, {"flight_id": "FR8321", "price_eur": 61}]},
            ),
            ("get_baggage", {"flight_id": "TP1944"}, {"cabin_kg": 8, "checked_kg": 0}),
        ],
        "invented": ("get_baggage", {"flight_id": "TP0001"}, {"cabin_kg": 10, "checked_kg": 23}),
        "error": "flight search timed out",
        "answer": "The cheapest is TP1944 at 49 EUR; it includes 8 kg cabin baggage and no checked bag.",
        "answer_zh": "最便宜的是TP1944，49欧元；包含8公斤手提行李，不含托运行李。",
        "answer_en_for_zh": "The cheapest is TP1944 at 49 EUR; it includes 8 kg cabin baggage and no checked bag.",
        "wrong": "The cheapest is FR8321 at 61 EUR; it includes a 23 kg checked bag.",
        "ungrounded": "Budget flights on that route usually cost about 30 EUR and include a small cabin bag.",
        "invented_answer": "The flight includes 10 kg cabin baggage and a 23 kg checked bag.",
        "partial": "The cheapest flight is TP1944 at 49 EUR.",
        "url": "The cheapest is TP1944 at 49 EUR with 8 kg cabin baggage; book at https://book.example.com/TP1944.",
    },
}


def build_traj(cid: str, domain: dict[str, Any], query: str, turns: list[tuple[str | None, list[tuple]]],
               answer: str) -> Trajectory:
    """turns: (assistant text, [(tool, args, result, is_error)]) per assistant turn with calls."""
    msgs = [ChatMessage(role="system", content="You are a helpful assistant with tools."),
            ChatMessage(role="user", content=query)]
    steps = []
    n = 0
    for text, calls in turns:
        ids = []
        for _ in calls:
            n += 1
            ids.append(f"call_{n}")
        msgs.append(ChatMessage(role="assistant", content=text, tool_calls=[
            ToolCall(id=i, name=c[0], arguments=json.dumps(c[1])) for i, c in zip(ids, calls, strict=True)]))
        for i, (name, args, result, err) in zip(ids, calls, strict=True):
            content = result if isinstance(result, str) else json.dumps(result)
            msgs.append(ChatMessage(role="tool", tool_call_id=i, name=name, content=content))
            steps.append(Step(call_id=i, tool=name, server=domain["server"], server_tool=name, arguments=args,
                              result=result, is_error=err))
    msgs.append(ChatMessage(role="assistant", content=answer))
    return Trajectory(id=cid, task_id=f"task-{cid}", model="calibration", tools=domain["tools"], messages=msgs,
                      steps=steps, final_answer=answer, termination="final_answer")


def L(ref: str, score: float, why: str) -> ItemLabel:
    return ItemLabel(ref=ref, score=score, why=why)


def ok(call: tuple) -> tuple:
    return (*call, False)


def cases_for(name: str, d: dict[str, Any]) -> list[CalibrationCase]:
    c1, c2 = d["calls"]
    first_tool, second_tool = c1[0], c2[0]
    out: list[tuple[Defect, str, str, list, str, list[ItemLabel]]] = []
    clean_turns = [(d["plan"], [ok(c1)]), (None, [ok(c2)])]
    base = [
        L("C1", 1, f"{first_tool} with the value the user gave: necessary first step"),
        L("C2", 1, f"{second_tool} with the value {first_tool} returned: necessary"),
        L("T1", 1, "the tool returned a result without error"),
        L("T2", 1, "the tool returned a result without error"),
        L("P1", 1, f"after reading T1 it calls {second_tool} with the returned value"),
        L("U1", 1, "the value in T1 is used unchanged in the next call"),
        L("F.understand", 1, "the first response states the user's goal correctly"),
        L("F.plan", 1, "the written plan covers both steps and the calls follow it"),
    ]

    def with_(labels: list[ItemLabel], **changes: tuple[float, str]) -> list[ItemLabel]:
        fixed = {k.replace("_", "."): v for k, v in changes.items()}
        return [L(lb.ref, *fixed[lb.ref]) if lb.ref in fixed else lb for lb in labels]

    answer_ok = [L("A.relevance", 1, "answers exactly what was asked"),
                 L("A.summary", 1, "every fact in the answer comes from the tool results")]
    out.append((Defect.CLEAN, d["query"], "", clean_turns, d["answer"], base + answer_ok))
    # redundant: the second call is repeated with the same arguments after its result arrived
    out.append(
        (
            Defect.REDUNDANT_CALL,
            d["query"],
            "the last call is repeated with identical arguments",
            [*clean_turns, (None, [ok(c2)])],
            d["answer"],
            [
                *with_(
                    base, F_plan=(0.5, "the plan is right but the trajectory repeats a call (meaningless repetition)")
                ),
                L("C3", 0, f"repeats {second_tool} with identical arguments after its result was known"),
                L("T3", 1, "the tool returned a result without error"),
                L("P2", 0, "plans a call whose result the agent already had"),
                L("U2", 0, "the agent did not use T2: it asked for the same result again"),
                *answer_ok,
            ],
        )
    )
    # ignored error: the first call fails and the agent invents the value it needed
    inv = d["invented"]
    out.append((Defect.IGNORED_ERROR, d["query"], "the first call fails; the agent carries on with an invented value",
                [(d["plan"], [(c1[0], c1[1], d["error"], True)]), (None, [ok(inv)])], d["invented_answer"], [
                    L("C1", 1, f"{first_tool} with the user's value; the failure is the environment's"),
                    L("C2", 0, f"{second_tool} with a value no tool returned (the lookup failed): hallucinated"),
                    L("T1", 0.5, "the tool returned an error"), L("T2", 1, "the tool returned a result"),
                    L("P1", 0, "ignores the error in T1 and proceeds with an invented value"),
                    L("U1", 0, "the error in T1 is ignored"),
                    L("F.understand", 1, "the first response states the user's goal correctly"),
                    L("F.plan", 1, "right plan and first call; the failure is external"),
                    L("A.relevance", 0.5, "addresses the question, but with an answer for the wrong entity"),
                    L("A.summary", 0, "hides the failed lookup and presents results for an invented value")]))
    # wrong final answer: contradicts the tool results
    out.append((Defect.WRONG_ANSWER, d["query"], "the answer contradicts the tool results", clean_turns, d["wrong"],
                [*base, L("A.relevance", 0.5, "on topic but the key facts are wrong"),
                 L("A.summary", 0, "contradicts what the tools returned")]))
    # ungrounded final answer: ignores the results and states facts no tool returned
    out.append((Defect.UNGROUNDED_ANSWER, d["query"], "the answer ignores the tool results", clean_turns,
                d["ungrounded"], [*base, L("A.relevance", 0.5, "on topic but does not give the requested fact"),
                                     L("A.summary", 0, "states facts no tool returned and omits the results")]))
    # fabricated URL
    out.append((Defect.FABRICATED_URL, d["query"], "the answer cites a URL no tool returned", clean_turns, d["url"],
                [*base, L("A.relevance", 1, "answers what was asked"),
                 L("A.summary", 0, "cites a URL that appears nowhere in the trajectory")]))
    # language mismatch: an English query answered in Chinese (and the reverse for one domain)
    if name == "docs":
        query, answer = d["query_zh"], d["answer_en_for_zh"]
        why = "a Chinese query answered in English"
    else:
        query, answer = d["query"], d["answer_zh"]
        why = "an English query answered in Chinese"
    out.append((Defect.LANGUAGE_MISMATCH, query, why, clean_turns, answer, [
        *base, L("A.relevance", 0, "the answer is not in the language of the query"),
        L("A.summary", 1, "the content is faithful to the tool results")]))
    # hallucinated parameter: skips the lookup and invents the value the second tool needs
    out.append((Defect.HALLUCINATED_PARAMETER, d["query"], f"calls {second_tool} with an invented value",
                [(None, [ok(inv)])], d["invented_answer"], [
                    L("C1", 0, f"the {second_tool} argument was never given by the user nor returned by a tool"),
                    L("T1", 1, "the tool returned a result without error"),
                    L("F.understand", 1, "the call shows the user's goal was understood"),
                    L("F.plan", 0, f"the first step passes an invented value and skips {first_tool}"),
                    L("A.relevance", 0.5, "addresses the question, but for an invented entity"),
                    L("A.summary", 1, "faithful to what the tool returned")]))
    # missing plan: no plan written, only the first step done, then a partial answer
    out.append((Defect.MISSING_PLAN, d["query"], "no plan; the second step is never taken", [(None, [ok(c1)])],
                d["partial"], [
                    L("C1", 1, f"{first_tool} with the user's value: necessary"),
                    L("T1", 1, "the tool returned a result without error"),
                    L("F.understand", 1, "the first call targets the right information"),
                    L("F.plan", 0.5, f"no plan; the trajectory never calls {second_tool}: a key step is missing"),
                    L("A.relevance", 0.5, "answers only part of the question"),
                    L("A.summary", 1, "faithful to the one result it got")]))
    cases = []
    for defect, query, note, turns, answer, labels in out:
        cid = f"cal-{name}-{defect.value}"
        traj = build_traj(cid, d, query, turns, answer)
        task = Task(id=f"task-{cid}", user_turns=[query], target_tools=[f"{d['server']}/{first_tool}",
                                                                        f"{d['server']}/{second_tool}"])
        cases.append(CalibrationCase(id=cid, defect=defect, note=note or "a clean control", task=task,
                                     trajectory=traj, labels=labels))
    return cases


def no_call_cases() -> list[CalibrationCase]:
    out = []
    for i, (query, answer) in enumerate([("What is 12 times 12?", "12 times 12 is 144."),
                                         ("Say hello in Portuguese.", "Hello in Portuguese is \"Olá\".")]):
        cid = f"cal-nocall-{i + 1}"
        traj = Trajectory(id=cid, task_id=f"task-{cid}", model="calibration", tools=DOMAINS["weather"]["tools"],
                          messages=[ChatMessage(role="system", content="You are a helpful assistant with tools."),
                                    ChatMessage(role="user", content=query),
                                    ChatMessage(role="assistant", content=answer)],
                          final_answer=answer, termination="final_answer")
        out.append(CalibrationCase(
            id=cid, defect=Defect.CLEAN, note="no tool is needed and none is called", task=Task(
                id=f"task-{cid}", user_turns=[query]), trajectory=traj, labels=[
                L("F.understand", 1, "the answer shows the request was understood"),
                L("F.plan", 1, "answering directly is the right plan: no tool is needed"),
                L("A.relevance", 1, "answers exactly what was asked"),
                L("A.summary", 1, "nothing before the answer to summarise (original rule)")]))
    return out


def check(case: CalibrationCase) -> None:
    found = itemise(case.task, case.trajectory)
    refs = [c.ref for c in found.calls] + [r for r, _ in found.tool_messages] + [r for r, _ in found.plan_segments]
    refs += [r for r, _ in found.understand_batches] + ["F.understand", "F.plan", "A.relevance", "A.summary"]
    labelled = [lb.ref for lb in case.labels]
    if sorted(refs) != sorted(labelled):
        sys.exit(f"{case.id}: items {sorted(refs)} but labels {sorted(labelled)}")
    by_ref = {lb.ref: lb.score for lb in case.labels}
    for ref, verdict in rule_items(case.task, case.trajectory, found).items():
        if by_ref[ref] != verdict.score:
            sys.exit(f"{case.id}: {ref} labelled {by_ref[ref]} but the rule says {verdict.score} ({verdict.reason})")


def main() -> None:
    cases = [c for name, d in DOMAINS.items() for c in cases_for(name, d)] + no_call_cases()
    for c in cases:
        check(c)
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(c.model_dump_json(exclude_none=True) + "\n" for c in cases), "utf-8")
    print(f"{len(cases)} cases -> {path}")


if __name__ == "__main__":
    main()
