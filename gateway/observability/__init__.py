"""Metrics and logs around the request path."""
