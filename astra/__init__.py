"""ASTRA: agentic trajectory and arena synthesis for tool-using LLM agents on real MCP servers.

Units: :mod:`astra.registry` (the record), :mod:`astra.servers` (environments as MCP
servers), :mod:`astra.client` (MCP client harness), :mod:`astra.synthesis` (the pipelines).
"""

__version__ = "0.1.0"
