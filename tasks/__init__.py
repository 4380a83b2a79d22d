"""Prefect tasks: thin typed wrappers over ``custody``, with retries, caching and tags declared."""
