"""Helpers shared by the tests and the benchmarks: throwaway PostgreSQL, API subprocesses."""
