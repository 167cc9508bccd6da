"""The HTTP edge: routes, wire shapes, SSE relay, middleware and error rendering."""
