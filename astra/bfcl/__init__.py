"""astra.bfcl — the BFCL v3 multi-turn arena over MCP.

BFCL's eight multi-turn backends (file system, math, message, posting, ticket, trading,
travel, vehicle control) are served as real MCP servers; entries are driven through our
client harness the way BFCL's own inference loop drives them, and scored by BFCL's
``multi_turn_checker``. Needs the optional ``bfcl-eval`` package (``pip install --no-deps
bfcl-eval mpmath``).
"""

from astra.bfcl._data import (
    CATEGORIES,
    CATEGORY_TITLES,
    BfclEntry,
    BfclUnavailable,
    bfcl_available,
    load_entries,
)
from astra.bfcl._episode import ground_truth_as_decoded
from astra.bfcl._gold import GOLD_MODEL
from astra.bfcl._run import BfclResult, BfclSummary, model_factory, run_bfcl
from astra.bfcl._score import score_decoded
from astra.bfcl._servers import SERVER_IMPLEMENTATIONS, server_name

__all__ = [
    "CATEGORIES",
    "CATEGORY_TITLES",
    "GOLD_MODEL",
    "SERVER_IMPLEMENTATIONS",
    "BfclEntry",
    "BfclResult",
    "BfclSummary",
    "BfclUnavailable",
    "bfcl_available",
    "ground_truth_as_decoded",
    "load_entries",
    "model_factory",
    "run_bfcl",
    "score_decoded",
    "server_name",
]
