"""A Dagster pipeline whose ops run as titan jobs (see README.md here)."""
