"""Compute hosts as resources: where an experiment's learners and inference replicas run.

Pure state and a pure decision, fed by events like :class:`~pipeline.fleet.Fleet`:
``userctl host`` announces a machine's CPUs, memory and GPUs on ``hosts`` and heartbeats
on ``hosts.heartbeats``; the controller folds those and the ``placements`` it decided into
:class:`Compute`, and :meth:`Compute.tick` returns what to publish next.

Only experiments that ask for compute are placed here: ``learner.gpus`` set (0 is "any
host") or ``inference.replicas > 0``.  Others keep running their learner by hand.

The decision (:func:`schedule`), one call per tick:

* Each workload (one learner, one inference replica) takes one slot (a CPU) and its
  GPUs on one alive host.  GPUs are whole and never shared.
* Experiments are served in submission order.  One that has not started is placed whole
  or not at all (a learner without its replicas is useless); if it does not fit it waits
  as ``queued`` with its place in line, and nothing submitted after it is started ahead
  of it (strict FIFO: a big experiment is never starved by small ones).
* A started experiment whose learner or replica lost its host gets that workload back on
  any host that fits, as soon as one does; it is never queued again.
* Host choice: a GPU workload goes to the host whose free GPUs fit most tightly; a CPU
  workload prefers hosts without GPUs (GPUs stay free for those who need them); replicas
  of one experiment spread over hosts (a lost host takes as few of them as possible);
  then most free slots, then host id.

Time is the controller's monotonic clock, as in the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from schemas import events as ev
from schemas.experiment import ExperimentSpec

log = logging.getLogger(__name__)

Role = ev.WorkloadRole
ExperimentState = ev.ExperimentState

#: States in which an experiment holds or wants compute.
_WANTS = (ExperimentState.SUBMITTED, ExperimentState.QUEUED, ExperimentState.SCHEDULED,
          ExperimentState.RUNNING, ExperimentState.PAUSED)
#: States of an experiment that has started (its placements are repaired, never queued).
_STARTED = (ExperimentState.SCHEDULED, ExperimentState.RUNNING, ExperimentState.PAUSED)


@dataclass(frozen=True)
class Demand:
    """One workload an experiment needs: a learner or an inference replica."""

    experiment_id: str
    role: ev.WorkloadRole
    index: int
    gpus: int = 0

    @property
    def placement_id(self) -> str:
        return f"{self.experiment_id}.{self.role.value}.{self.index}"


def demands(experiment_id: str, spec: ExperimentSpec) -> list[Demand]:
    """The workloads ``spec`` asks to be placed (empty: it asks for no compute)."""
    out: list[Demand] = []
    if spec.learner.gpus is not None:
        out += [Demand(experiment_id, Role.LEARNER, i, spec.learner.gpus)
                for i in range(max(spec.learner.slots, 1))]
    out += [Demand(experiment_id, Role.INFERENCE, i, spec.inference.gpus)
            for i in range(spec.inference.replicas)]
    return out


@dataclass(frozen=True)
class HostView:
    """What the decision needs to know about an alive host."""

    host_id: str
    slots: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Placed:
    """A workload that runs (or is starting) on a host."""

    demand: Demand
    host_id: str
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Want:
    """An experiment's compute request, in submission order."""

    experiment_id: str
    demands: tuple[Demand, ...]
    started: bool


@dataclass
class Plan:
    """What :func:`schedule` decided: new placements, and the experiments left waiting
    (experiment id -> why, with the place in line for those not started)."""

    grants: list[Placed] = field(default_factory=list)
    queued: dict[str, str] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)


def _need(missing: Sequence[Demand]) -> str:
    gpus = sum(d.gpus for d in missing)
    parts = [f"{len(missing)} slot{'s' * (len(missing) != 1)}"]
    if gpus:
        parts.append(f"{gpus} GPU{'s' * (gpus != 1)}")
    return " and ".join(parts)


def schedule(hosts: Sequence[HostView], placed: Sequence[Placed],
             wants: Sequence[Want]) -> Plan:
    """Decide where the not-yet-placed workloads of ``wants`` go (module docstring).

    ``hosts`` are the alive hosts; ``placed`` what runs on them now.  Pure: the inputs
    are not changed.
    """
    free_slots = {h.host_id: h.slots for h in hosts}
    free_gpus = {h.host_id: list(h.gpus) for h in hosts}
    has_gpus = {h.host_id: bool(h.gpus) for h in hosts}
    running: set[str] = set()
    replicas_on: dict[tuple[str, str], int] = {}
    for p in placed:
        if p.host_id not in free_slots:
            continue  # a lost host's workloads count as missing
        running.add(p.demand.placement_id)
        free_slots[p.host_id] -= 1
        free_gpus[p.host_id] = [g for g in free_gpus[p.host_id] if g not in p.gpus]
        key = (p.demand.experiment_id, p.host_id)
        replicas_on[key] = replicas_on.get(key, 0) + 1

    def pick(d: Demand, slots: dict[str, int], gpus: dict[str, list[int]],
             spread: dict[tuple[str, str], int]) -> str | None:
        fits = [h for h in sorted(slots) if slots[h] >= 1 and len(gpus[h]) >= d.gpus]
        if not fits:
            return None
        return min(fits, key=lambda h: (
            len(gpus[h]) - d.gpus if d.gpus else int(has_gpus[h]),
            spread.get((d.experiment_id, h), 0),
            -slots[h],
            h,
        ))

    def take(d: Demand, h: str, slots: dict[str, int], gpus: dict[str, list[int]],
             spread: dict[tuple[str, str], int]) -> Placed:
        slots[h] -= 1
        got, gpus[h] = tuple(gpus[h][:d.gpus]), gpus[h][d.gpus:]
        spread[(d.experiment_id, h)] = spread.get((d.experiment_id, h), 0) + 1
        return Placed(d, h, got)

    plan = Plan()
    blocked = False  # an earlier unstarted experiment waits: nothing new starts ahead
    position = 0
    for want in wants:
        missing = [d for d in want.demands if d.placement_id not in running]
        if not missing:
            continue
        if want.started:
            for d in missing:
                host = pick(d, free_slots, free_gpus, replicas_on)
                if host is None:
                    plan.short[want.experiment_id] = (
                        f"{d.role.value} {d.index} has no host: waiting for a host with "
                        f"{_need([d])} free")
                    continue
                plan.grants.append(take(d, host, free_slots, free_gpus, replicas_on))
            continue
        if not blocked:
            slots, gpus, spread = dict(free_slots), {h: list(g) for h, g in free_gpus.items()}, \
                dict(replicas_on)
            trial: list[Placed] = []
            for d in sorted(missing, key=lambda d: -d.gpus):  # GPU workloads first
                host = pick(d, slots, gpus, spread)
                if host is None:
                    break
                trial.append(take(d, host, slots, gpus, spread))
            if len(trial) == len(missing):
                plan.grants.extend(sorted(trial, key=lambda p: p.demand.placement_id))
                free_slots, free_gpus, replicas_on = slots, gpus, spread
                continue
            blocked = True
        position += 1
        plan.queued[want.experiment_id] = (
            f"position {position} in the compute queue: needs {_need(missing)} "
            f"({len(hosts)} host{'s' * (len(hosts) != 1)} up)")
    return plan


# -- state from events ----------------------------------------------------------------------


@dataclass
class Host:
    """What the controller knows about one compute host."""

    host_id: str
    site: str
    cpus: int
    memory_mb: int
    gpus: tuple[ev.GpuInfo, ...] = ()
    last_seen: float = 0.0
    lost: bool = False
    running: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)
    #: A heartbeat was heard (heartbeats are followed live, never replayed): only such a
    #: host gets new work, so a controller that restarts does not place on a dead host
    #: whose announcement it replayed during the grace it gives every host.
    beating: bool = False

    def alive(self, now: float, timeout_s: float) -> bool:
        return now - self.last_seen <= timeout_s


@dataclass
class _Experiment:
    experiment_id: str
    spec: ExperimentSpec | None
    state: ExperimentState = ExperimentState.SUBMITTED
    detail: str = ""


class Compute:
    """Hosts, placements and experiments' compute requests; decides in events.

    Usage (as the controller does, before the fleet's tick)::

        compute.apply(event, now)          # hosts, heartbeats, placements, experiments
        for decision in compute.tick(now): # placements, releases, queued status
            publish(decision); compute.apply(decision, now); fleet.apply(decision, now)
    """

    def __init__(self, heartbeat_timeout_s: float = 5.0) -> None:
        if heartbeat_timeout_s <= 0:
            raise ValueError("heartbeat_timeout_s must be positive")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.hosts: dict[str, Host] = {}
        self.placements: dict[str, ev.PlacementGrantedV1] = {}
        self.experiments: dict[str, _Experiment] = {}
        self._order: list[str] = []

    def apply(self, event: ev.Envelope, now: float) -> None:
        """Fold one event into the state; events of other kinds are ignored."""
        match event:
            case ev.HostAnnouncedV1():
                host = self.hosts.get(event.host_id)
                if host is None:
                    self.hosts[event.host_id] = Host(event.host_id, event.site, event.cpus,
                                                     event.memory_mb, event.gpus, now)
                else:
                    host.site, host.cpus, host.memory_mb, host.gpus = (
                        event.site, event.cpus, event.memory_mb, event.gpus)
                    host.last_seen, host.lost = now, False
            case ev.HostHeartbeatV1():
                host = self.hosts.get(event.host_id)
                if host is not None:
                    host.last_seen, host.lost, host.beating = now, False, True
                    host.running, host.failed = event.running, dict(event.failed)
            case ev.PlacementGrantedV1():
                self.placements[event.placement_id] = event
            case ev.PlacementReleasedV1():
                held = self.placements.get(event.placement_id)
                if held is not None and held.host_id == event.host_id:
                    del self.placements[event.placement_id]
                if event.reason is ev.PlacementReleaseReason.HOST_LOST:
                    lost = self.hosts.get(event.host_id)
                    if lost is not None:
                        lost.lost = True
            case ev.ExperimentSubmittedV1():
                if event.experiment_id not in self.experiments:
                    try:
                        spec: ExperimentSpec | None = ExperimentSpec.model_validate(event.spec)
                    except ValidationError:
                        spec = None  # the fleet fails it, saying why
                    self.experiments[event.experiment_id] = _Experiment(event.experiment_id,
                                                                        spec)
                    self._order.append(event.experiment_id)
            case ev.ExperimentStatusV1():
                exp = self.experiments.get(event.experiment_id)
                if exp is not None:
                    exp.state, exp.detail = event.state, event.detail
            case _:
                pass

    def grace(self, now: float) -> None:
        """Give every host a full timeout from ``now`` (the controller's blind spells)."""
        for host in self.hosts.values():
            host.last_seen = max(host.last_seen, now)

    def placements_of(self, experiment_id: str) -> list[ev.PlacementGrantedV1]:
        return sorted((p for p in self.placements.values()
                       if p.experiment_id == experiment_id), key=lambda p: p.placement_id)

    def tick(self, now: float, *, detect_lost: bool = True) -> list[ev.Envelope]:
        """Decide: release a lost host's and ended experiments' placements, place what is
        missing, and say which experiments wait.  Does not change the state."""
        out: list[ev.Envelope] = []
        lost: set[str] = set()
        for host in sorted(self.hosts.values(), key=lambda h: h.host_id):
            if host.lost or (detect_lost and not host.alive(now, self.heartbeat_timeout_s)):
                lost.add(host.host_id)
        for p in sorted(self.placements.values(), key=lambda p: p.placement_id):
            exp = self.experiments.get(p.experiment_id)
            reason: ev.PlacementReleaseReason | None = None
            if p.host_id in lost or p.host_id not in self.hosts:
                reason = ev.PlacementReleaseReason.HOST_LOST
            elif exp is None or exp.state not in _WANTS:
                reason = (ev.PlacementReleaseReason.CANCELLED
                          if exp is not None and exp.state is ExperimentState.CANCELLED
                          else ev.PlacementReleaseReason.COMPLETED)
            if reason is not None:
                out.append(ev.PlacementReleasedV1(
                    placement_id=p.placement_id, experiment_id=p.experiment_id,
                    host_id=p.host_id, reason=reason))
        released = {e.placement_id for e in out if isinstance(e, ev.PlacementReleasedV1)}
        alive = [HostView(h.host_id, h.cpus, tuple(g.index for g in h.gpus))
                 for h in sorted(self.hosts.values(), key=lambda h: h.host_id)
                 if h.host_id not in lost and h.beating]
        placed = [Placed(Demand(p.experiment_id, p.role, p.index, len(p.gpus)), p.host_id,
                         p.gpus)
                  for p in self.placements.values() if p.placement_id not in released]
        wants: list[Want] = []
        for exp_id in self._order:
            exp = self.experiments[exp_id]
            if exp.spec is None or exp.state not in _WANTS:
                continue
            asked = demands(exp_id, exp.spec)
            if asked:
                wants.append(Want(exp_id, tuple(asked), exp.state in _STARTED))
        plan = schedule(alive, placed, wants)
        for g in plan.grants:
            out.append(ev.PlacementGrantedV1(
                placement_id=g.demand.placement_id, experiment_id=g.demand.experiment_id,
                host_id=g.host_id, role=g.demand.role, index=g.demand.index, gpus=g.gpus))
        granted = {g.demand.experiment_id for g in plan.grants}
        for want in wants:
            exp = self.experiments[want.experiment_id]
            if want.experiment_id in plan.queued:
                detail = plan.queued[want.experiment_id]
                if (exp.state, exp.detail) != (ExperimentState.QUEUED, detail):
                    out.append(ev.ExperimentStatusV1(experiment_id=want.experiment_id,
                                                     state=ExperimentState.QUEUED,
                                                     detail=detail[:1000]))
            elif want.experiment_id in granted and not want.started:
                # Compute is placed; the fleet now leases robots (SCHEDULED is its cue).
                out.append(ev.ExperimentStatusV1(
                    experiment_id=want.experiment_id, state=ExperimentState.SCHEDULED,
                    detail=f"compute placed: {len(want.demands)} workloads; leasing robots"))
            elif want.experiment_id in plan.short:
                log.warning("experiment %s: %s", want.experiment_id,
                            plan.short[want.experiment_id])
        return out


def hosts_table(hosts: Iterable[Host], placements: Mapping[str, ev.PlacementGrantedV1],
                now: float, timeout_s: float) -> list[dict[str, object]]:
    """Rows for ``userctl hosts``: one per host, with what is placed on it."""
    rows: list[dict[str, object]] = []
    for h in sorted(hosts, key=lambda h: h.host_id):
        on = sorted(p.placement_id for p in placements.values() if p.host_id == h.host_id)
        rows.append({
            "host": h.host_id, "site": h.site,
            "state": "lost" if h.lost or not h.alive(now, timeout_s) else "up",
            "cpus": h.cpus, "memory_gb": round(h.memory_mb / 1024, 1),
            "gpus": ", ".join(f"{g.name} {g.memory_mb // 1024} GiB" for g in h.gpus) or "-",
            "placed": ", ".join(on) or "-",
            "running": ", ".join(h.running) or "-",
            "failed": "; ".join(f"{k}: {v}" for k, v in h.failed.items()) or "",
        })
    return rows
