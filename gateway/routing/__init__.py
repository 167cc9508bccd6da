"""Routing: which deployments may serve a request, in which order."""
