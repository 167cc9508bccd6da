"""Shared pieces of the load tests and the benchmark: processes, prompts, a fast HTTP client."""
