"""Agentic examples: DAGs that decide their own shape while they run (each run by the tests)."""
