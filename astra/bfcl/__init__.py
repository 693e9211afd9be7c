"""astra.bfcl — the BFCL v3 multi-turn arena over MCP.

BFCL's eight multi-turn backends (file system, math, message, posting, ticket, trading,
travel, vehicle control) are served as real MCP servers; entries are driven through our
client harness the way BFCL's own inference loop drives them, and scored by BFCL's
``multi_turn_checker``. Needs the optional ``bfcl-eval`` package (``pip install --no-deps
bfcl-eval mpmath``).
"""

from astra.bfcl._calls import CallParseError, format_call, parse_call
from astra.bfcl._data import (
    ADDED_FUNCTIONS_PROMPT,
    BACKEND_CLASSES,
    CATEGORIES,
    CATEGORY_TITLES,
    MAX_STEPS_PER_TURN,
    BfclEntry,
    BfclUnavailable,
    bfcl_available,
    function_docs,
    load_entries,
)
from astra.bfcl._episode import BfclEpisode, ground_truth_as_decoded, run_entry
from astra.bfcl._gold import GOLD_MODEL, gold_model, gold_replies
from astra.bfcl._run import BfclResult, BfclSummary, model_factory, run_bfcl, score_entry, summarize
from astra.bfcl._schema import function_input_schema
from astra.bfcl._score import BfclVerdict, StateDiff, compare_with_direct_execution, score_decoded
from astra.bfcl._servers import (
    SERVER_IMPLEMENTATIONS,
    BfclEpisodeServers,
    astra_backend_server,
    backend_server,
    bfcl_result_text,
    server_name,
)

__all__ = [
    "ADDED_FUNCTIONS_PROMPT",
    "BACKEND_CLASSES",
    "CATEGORIES",
    "CATEGORY_TITLES",
    "GOLD_MODEL",
    "MAX_STEPS_PER_TURN",
    "SERVER_IMPLEMENTATIONS",
    "BfclEntry",
    "BfclEpisode",
    "BfclEpisodeServers",
    "BfclResult",
    "BfclSummary",
    "BfclUnavailable",
    "BfclVerdict",
    "CallParseError",
    "StateDiff",
    "astra_backend_server",
    "backend_server",
    "bfcl_available",
    "bfcl_result_text",
    "compare_with_direct_execution",
    "format_call",
    "function_docs",
    "function_input_schema",
    "gold_model",
    "gold_replies",
    "ground_truth_as_decoded",
    "load_entries",
    "model_factory",
    "parse_call",
    "run_bfcl",
    "run_entry",
    "score_decoded",
    "score_entry",
    "server_name",
    "summarize",
]
