"""A BFCL gold run in its own process, slowed per entry (the kill -9 test kills it mid-run)."""

from __future__ import annotations

import sys

import anyio

from astra.bfcl import BfclEntry, load_entries, run_bfcl
from astra.bfcl._gold import gold_model
from astra.client import Model


def slow_gold(entry: BfclEntry) -> Model:
    model = gold_model(entry)
    request = model.request

    async def slowly(*args, **kwargs):  # type: ignore[no-untyped-def]
        await anyio.sleep(0.05)
        return await request(*args, **kwargs)

    model.request = slowly  # type: ignore[method-assign]
    return model


if __name__ == "__main__":
    out, limit = sys.argv[1], int(sys.argv[2])
    summary = anyio.run(lambda: run_bfcl(slow_gold, load_entries(["base"], limit=limit), out,
                                         model_name="scripted:gold", concurrency=2, keep_messages=False))
    print(summary.model_dump_json())
