"""The folder put on ``sys.path`` / ``PYTHONPATH`` so that ``import titan_sdk`` finds the compat layer."""
