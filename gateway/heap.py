"""The startup heap, frozen out of the cyclic garbage collector.

Concept: after start-up a process holds tens of thousands of long-lived container objects
(tokenizer tables, SQLAlchemy metadata, routes, settings) that are never garbage. Python's
full (generation 2) collection still walks every one of them: 26 ms for the tokenizers alone,
about once every few hundred requests, which cost ~0.1 ms of CPU per request and showed as
100 ms latency spikes at p99 (docs/performance.md). `gc.freeze()` moves everything alive now
into a permanent generation the collector skips; objects made later (per-request garbage,
caches that grow) are collected as before, so nothing leaks that would not have leaked.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later cyclic collections.

    Call when start-up is complete (tokenizers loaded, clients built), before traffic.
    Returns how many objects are now frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
