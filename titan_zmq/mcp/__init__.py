"""The MCP server of titan (``titan mcp``): AI agents drive the cluster through the Model Context Protocol.

``calls.py`` does the work (no MCP dependency), ``tools.py`` names and describes the tools,
``server.py`` builds the SDK's server with the audit and the resources, ``cli.py`` is the command.
The SDK comes with the ``[mcp]`` extra: ``pip install 'titan_zmq[mcp]'``.
"""
