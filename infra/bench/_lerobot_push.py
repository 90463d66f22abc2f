"""LeRobot's HIL-SERL parameter push, timed: run by ``userctl bench weights-lerobot`` in an
interpreter that has LeRobot's wheel on its path (not imported by USER itself).

Per actor, one ``LearnerService`` (LeRobot's own gRPC servicer) on its own port, as a
LeRobot learner serves one actor; the actor calls ``StreamParameters`` and reassembles with
``receive_bytes_in_chunks`` into its queue, then (its actor loop's
``update_policy_parameters``) ``bytes_to_state_dict`` and ``load_state_dict`` into a
running policy.  The learner side serialises with ``state_to_bytes`` (``torch.save``) and
puts the bytes on each service's parameters queue; ``seconds_between_pushes`` is 0, so a
push goes out as soon as it is queued.  One sample = queue put -> loaded, per actor.

Only LeRobot's package ``__init__`` files are skipped (they import its datasets, cameras
and algorithms, none of which the push path uses); every module of the push path is
LeRobot's own file, unchanged.

Arguments: LeRobot's site directory, the hidden width of an ``mlp_gaussian``-shaped actor
(64 -> width -> width -> 2x8), actors, pushes.  Prints one JSON line:
{"samples_s": [...], "bytes": n}.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from concurrent import futures
from pathlib import Path


def _bare_packages(site: Path) -> None:
    """Register ``lerobot``, ``lerobot.utils`` and ``lerobot.rl`` as namespace-like
    packages (their submodules load from LeRobot's files; their ``__init__`` does not)."""
    for name in ("lerobot", "lerobot.utils", "lerobot.rl"):
        module = types.ModuleType(name)
        module.__path__ = [str(site.joinpath(*name.split(".")))]
        sys.modules[name] = module


def main() -> None:
    site, width, actors, repeats = Path(sys.argv[1]), int(sys.argv[2]), int(
        sys.argv[3]), int(sys.argv[4])
    _bare_packages(site)
    import grpc
    import torch
    from lerobot.rl.learner_service import LearnerService
    from lerobot.transport import services_pb2, services_pb2_grpc
    from lerobot.transport.utils import bytes_to_state_dict, receive_bytes_in_chunks, state_to_bytes
    from torch import nn

    torch.set_num_threads(1)
    class Actor(nn.Module):  # the layout of USER's mlp_gaussian (same tensors, same bytes)
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(64, width), nn.ReLU(),
                                       nn.Linear(width, width), nn.ReLU())
            self.mean = nn.Linear(width, 8)
            self.log_std = nn.Linear(width, 8)

    net = Actor()
    shutdown = threading.Event()
    queues: list[object] = []
    servers = []
    stubs = []
    import multiprocessing as mp

    for _ in range(actors):
        q: mp.Queue[bytes] = mp.Queue()  # what LeRobot's learner hands its service
        queues.append(q)
        service = LearnerService(shutdown, q, seconds_between_pushes=0.0,
                                 transition_queue=mp.Queue(),
                                 interaction_message_queue=mp.Queue())
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=3), options=[
            ("grpc.max_receive_message_length", 100 * 1024 * 1024),
            ("grpc.max_send_message_length", 100 * 1024 * 1024)])
        services_pb2_grpc.add_LearnerServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_receive_message_length", 100 * 1024 * 1024),
            ("grpc.max_send_message_length", 100 * 1024 * 1024)])
        stubs.append(services_pb2_grpc.LearnerServiceStub(channel))

    loaded: list[list[float]] = [[] for _ in range(actors)]
    got = threading.Condition()

    def actor(i: int) -> None:
        policy = Actor()
        import queue as queue_mod

        inbox: queue_mod.Queue[bytes] = queue_mod.Queue()
        stream = stubs[i].StreamParameters(services_pb2.Empty())
        receiver = threading.Thread(target=receive_bytes_in_chunks,
                                    args=(stream, inbox, shutdown), daemon=True)
        receiver.start()
        while not shutdown.is_set():
            try:
                data = inbox.get(timeout=0.05)
            except queue_mod.Empty:
                continue
            policy.load_state_dict(bytes_to_state_dict(data))
            with got:
                loaded[i].append(time.perf_counter())
                got.notify_all()

    threads = [threading.Thread(target=actor, args=(i,), daemon=True) for i in range(actors)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # streams open
    samples: list[float] = []
    nbytes = 0
    for r in range(repeats + 1):  # the first push warms the streams up, not counted
        for p in net.parameters():
            p.data.add_(0.001)
        t0 = time.perf_counter()
        data = state_to_bytes(net.state_dict())
        nbytes = len(data)
        for q in queues:
            q.put(data)  # type: ignore[attr-defined]
        with got:
            ok = got.wait_for(lambda r=r: all(len(x) > r for x in loaded), timeout=120)
        if not ok:
            raise SystemExit(f"push {r} not loaded by every actor within 120 s")
        if r:
            samples += [x[r] - t0 for x in loaded]
    # The figures first: tearing down 16 live gRPC streams can log errors or fail in
    # interpreter shutdown, which must not lose them.
    print(json.dumps({"samples_s": samples, "bytes": nbytes, "width": width}), flush=True)
    shutdown.set()
    for server in servers:
        server.stop(0)


if __name__ == "__main__":
    main()
