"""Bridges from other tools to titan: Dagster (``[dagster]``) and LangChain (``[langchain]``).

Each module imports its library at import time and raises a clear ImportError naming the extra to
install when it is missing; nothing here is imported by the core. The MCP server is ``titan_zmq.mcp``.
"""
