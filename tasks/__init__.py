"""Prefect tasks: thin typed wrappers over ``custody``, with retries and caching declared.

The tasks carry no tags on purpose: for every tagged task run Prefect asks the server for
tag concurrency slots, one more round trip per chunk (it stalled runs by up to 2 s here). Limit
concurrency with the flows' ``max_concurrency`` or with deployment concurrency limits instead.
"""
