"""Talking to upstreams: the HTTP client, provider adapters, token counting, the simulator."""
