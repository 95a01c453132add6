"""What the tests share, and what the benchmark harness borrows from them.

Process harnesses (local PostgreSQL/Redis, S3, `parley serve` processes), the test clients,
the in-process server, fakes, and the settings and stream helpers test modules import.
None of it is installed with Parley: `bench/` imports it from the repository checkout.
"""
