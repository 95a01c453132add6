"""Helpers that tests and benchmarks share: local PostgreSQL/Redis and server processes.

Nothing here is used by the server itself; it lives under `infra/` so that both
`tests/` and `bench/` import it without one importing the other.
"""
