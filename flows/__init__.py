"""Prefect flows, one per business job. Each composes tasks only."""
