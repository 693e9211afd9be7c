"""The tool-error vocabulary as the runtime imports it (``from ._kinds import ToolErrorKind``).

Here it is :mod:`astra.tool_errors`; an emitted server's vendored runtime gets a copy of that
file under this name (:mod:`astra.servers._emit`), so the runtime reads the same in both places.
"""

from astra.tool_errors import ToolErrorKind

__all__ = ["ToolErrorKind"]
