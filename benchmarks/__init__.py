"""The titan_zmq benchmark harness: ``python -m benchmarks`` (see benchmarks/README.md)."""
