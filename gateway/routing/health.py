"""Deployment health: what the balancer knows about each deployment, in this process.

Passive outlier detection: `consecutive_failures` failed attempts in a row eject a deployment
for `base_s`, doubled on each repeat up to `max_s` (the count decays once the deployment has
stayed healthy for `max_s`). When the cool-down ends the deployment is half-open: exactly one
request probes it; success closes it, failure ejects it again for longer. While it is out
(ejected or half-open) only the probe's outcome counts: attempts that started before the
ejection and end during it (stragglers) neither extend, end nor re-open it. Active checks (see
`probes.py`) set `active_ok`; a deployment failing them takes no traffic until they pass.

Outstanding requests are counted here too (the balancer's load signal), with the load a vLLM
deployment reports on /metrics when scraping is on.

Failure mode: health is per process, not shared between replicas; each replica learns on its
own within a few requests. Nothing here can widen a residency policy: it only removes
deployments from what the plan already allowed.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import Ejection

CLOSED, EJECTED, HALF_OPEN = "closed", "ejected", "half_open"


class DeploymentHealth:
    """One deployment's live state."""

    __slots__ = (
        "active_ok",
        "consecutive_failures",
        "ejected_until_s",
        "ejections",
        "healthy_since_s",
        "load_running",
        "load_waiting",
        "name",
        "outstanding",
        "probe_in_flight",
        "rejoined",
        "served",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.outstanding = 0
        self.served = 0  # attempts started; breaks balancing ties evenly
        # Back from an ejection, or new in a reload: `served` lags its peers and would win
        # every tie until it caught up. The balancer levels it with its group first.
        self.rejoined = False
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until_s: float | None = None
        self.healthy_since_s = 0.0
        self.probe_in_flight = False
        self.active_ok = True
        self.load_running = 0  # as scraped from vLLM /metrics (0 when not scraped)
        self.load_waiting = 0

    def state(self, now_s: float) -> str:
        """`closed` (serving), `ejected` (cooling down) or `half_open` (one probe allowed)."""
        if self.ejected_until_s is None:
            return CLOSED
        return EJECTED if now_s < self.ejected_until_s else HALF_OPEN

    def available(self, now_s: float) -> bool:
        """Whether a new attempt may go here now."""
        if not self.active_ok:
            return False
        state = self.state(now_s)
        return state == CLOSED or (state == HALF_OPEN and not self.probe_in_flight)

    def load(self) -> int:
        """Requests in flight from this process plus those queued at a scraped vLLM."""
        return self.outstanding + self.load_waiting

    def started(self, now_s: float) -> bool:
        """An attempt was sent here; True when it is the half-open probe (pass that back to
        `finished`/`abandoned`, so no other attempt's end is taken for the probe's)."""
        self.outstanding += 1
        self.served += 1
        if self.state(now_s) == HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def abandoned(self, *, probe: bool = False) -> None:
        """An attempt here was cancelled (the client left): no verdict on the deployment."""
        self.outstanding -= 1
        if probe:
            self.probe_in_flight = False

    def finished(self, now_s: float, *, ok: bool, policy: Ejection, probe: bool = False) -> None:
        """An attempt here ended: `ok` unless it failed in a way that counts against health."""
        self.outstanding -= 1
        if probe:
            self.probe_in_flight = False
        elif self.ejected_until_s is not None:
            return  # a straggler from before the ejection: only the probe decides
        if ok:
            self.consecutive_failures = 0
            if self.ejected_until_s is not None:
                self.ejected_until_s = None
                self.healthy_since_s = now_s
                self.rejoined = True
            return
        self.consecutive_failures += 1
        if probe or self.consecutive_failures >= policy.consecutive_failures:
            self._eject(now_s, policy)

    def _eject(self, now_s: float, policy: Ejection) -> None:
        if self.ejected_until_s is None and now_s - self.healthy_since_s >= policy.max_s:
            self.ejections = 0  # healthy long enough: forgive earlier ejections
        # The exponent is capped: a float power past ~2**1023 raises OverflowError, and a
        # deployment that stays down for days keeps counting ejections.
        cool_down = min(policy.max_s, policy.base_s * 2.0 ** min(self.ejections, 1000))
        self.ejections += 1
        self.ejected_until_s = now_s + cool_down
        self.consecutive_failures = 0


class HealthBoard:
    """Every deployment's health, kept across config reloads by deployment name."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._by_name: dict[str, DeploymentHealth] = {}
        self.track(names, joining=False)

    def track(self, names: Iterable[str], *, joining: bool = True) -> None:
        """Make sure each named deployment has a record (new ones start healthy and, when
        `joining` a running board, are levelled with their group before their first pick)."""
        for name in names:
            if name not in self._by_name:
                health = DeploymentHealth(name)
                health.rejoined = joining
                self._by_name[name] = health

    def __getitem__(self, name: str) -> DeploymentHealth:
        return self._by_name[name]

    def snapshot(self, now_s: float) -> dict[str, dict[str, object]]:
        """A JSON-ready view for operators (state, in flight, failures, ejections)."""
        return {
            name: {
                "state": h.state(now_s),
                "active_ok": h.active_ok,
                "outstanding": h.outstanding,
                "consecutive_failures": h.consecutive_failures,
                "ejections": h.ejections,
                "load_running": h.load_running,
                "load_waiting": h.load_waiting,
            }
            for name, h in self._by_name.items()
        }
