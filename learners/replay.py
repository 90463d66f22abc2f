"""The hot replay buffer: a numpy ring under a memory budget, and the RLPD mixing sampler.

Layout: one ring slot per *step*, not per transition. A step's next observation is found
through ``next_slot``, the slot of the same episode's following step, so each observation
(and camera image) is stored once, not twice. The ring overwrites oldest-first and a
successor is always written after its predecessor, so a link can never point at a slot
that was overwritten while the row that links to it survives.

How a step becomes a sampleable transition ``(s_t, a_t, r_t, s_{t+1}, terminated_t)``:

- its successor (step ``t + 1`` of the same robot and episode) arrives, in the same
  batch or a later one: ``s_{t+1}`` is that step's observation;
- it ``terminated``: no successor will come and none is needed (no bootstrap); the row
  links to itself;
- it was ``truncated``: its ``next_observation`` (the final observation) is written to an
  extra, never-sampled slot and the row links to that; without that column it is dropped
  (counted in ``dropped``), since a cut-off episode cannot be bootstrapped blind.

A step whose successor never arrives (robot crashed, a gap in steps) stays unsampleable
until the ring overwrites it.

Each slot keeps the step's ``intervention`` flag beside the executed ``action`` (a human's
where the flag is set): samples carry both, so imitation losses can weigh takeovers.

Camera frames held in host memory are compressed losslessly, one frame at a time
(``ReplayConfig.image_codec``, LZ4 by default: rendered 64×64 frames shrink ~6×, a sample
decodes each frame it draws, bytes exact). They live in one byte *arena*, written as a
circular log in row order, so its oldest bytes always belong to the oldest rows: when a
new batch's frames need the space, the oldest rows are evicted (unsampleable, their links
broken) exactly as the slot ring's own overwrite does.  A frame the codec cannot shrink is
stored raw.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from learners.core import Batch, ReplayBuffer, Sampler, StepBatch
from schemas import spaces

#: Rejection-sampling rounds before falling back to an exact draw from valid slots.
_REJECTION_ROUNDS = 8


@dataclass(frozen=True)
class ReplayConfig:
    """Shapes, dtypes and memory budget of a :class:`NumpyReplayBuffer`."""

    observation_shape: tuple[int, ...]
    """shape of one state observation."""
    action_shape: tuple[int, ...]
    """shape of one action."""
    memory_budget_bytes: int = 1 << 30
    """upper bound on the bytes the ring's arrays take; fixes the capacity in steps."""
    observation_dtype: str = "float32"
    """storage dtype of state observations."""
    image_shapes: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    """camera name -> (height, width, 3); images are stored as uint8."""
    seed: int = 0
    """seed of the sampling RNG."""
    image_device: str | None = None
    """where camera frames are held: ``None``, numpy arrays, or torch tensors on this
    torch device (``cuda``: samples are gathered there without a host copy — a GPU
    learner's path; the budget still counts them)."""
    image_codec: str | None = "lz4"
    """lossless codec (a ``pyarrow.Codec`` name) for frames held in host memory, one frame
    at a time; ``None`` keeps raw uint8 arrays. Ignored when ``image_device`` is set."""
    image_ratio: float = 8.0
    """with a codec: ring slots are sized as if frames shrank this many times; the frame
    arena gets the rest of the budget and evicts the oldest rows when they shrink less."""

    @classmethod
    def from_robot_spec(
        cls, spec: spaces.RobotSpec, memory_budget_bytes: int, seed: int = 0
    ) -> ReplayConfig:
        """Shapes and cameras of a robot (observations stored as float32)."""
        return cls(
            observation_shape=spec.observation.shape,
            action_shape=spec.action.shape,
            memory_budget_bytes=memory_budget_bytes,
            image_shapes={cam.name: cam.shape for cam in spec.cameras},
            seed=seed,
        )

    def columns(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Every per-slot array: name -> (shape of one slot, dtype)."""
        cols: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            "observation": (self.observation_shape, np.dtype(self.observation_dtype)),
            "action": (self.action_shape, np.dtype(np.float32)),
            "reward": ((), np.dtype(np.float32)),
            "terminated": ((), np.dtype(np.bool_)),
            "policy_version": ((), np.dtype(np.int64)),
            "intervention": ((), np.dtype(np.bool_)),
            "instruction": ((), np.dtype(np.int32)),  # code in the buffer's vocabulary
            "next_slot": ((), np.dtype(np.int64)),
            "row_id": ((), np.dtype(np.int64)),
            "sampleable": ((), np.dtype(np.bool_)),
        }
        for name, shape in self.image_shapes.items():
            if self.compressed:  # where the slot's frame lies in the arena
                cols[f"frame_at/{name}"] = ((), np.dtype(np.int64))
                cols[f"frame_len/{name}"] = ((), np.dtype(np.int32))
            else:
                cols[f"image/{name}"] = (tuple(shape), np.dtype(np.uint8))
        return cols

    @property
    def compressed(self) -> bool:
        """Whether frames are held compressed in a host byte arena."""
        return bool(self.image_shapes) and self.image_codec is not None \
            and self.image_device is None

    def slot_bytes(self) -> int:
        """Bytes one ring slot takes across all arrays (with a codec: frames excluded)."""
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.columns().values())

    def capacity(self) -> int:
        """Ring slots that fit the budget."""
        if self.compressed:
            frames = sum(math.prod(s) for s in self.image_shapes.values()) / self.image_ratio
            return int(self.memory_budget_bytes // (self.slot_bytes() + frames))
        return self.memory_budget_bytes // self.slot_bytes()

    def arena_bytes(self) -> int:
        """Bytes of the compressed-frame arena: the budget left beside the slot arrays."""
        if not self.compressed:
            return 0
        return self.memory_budget_bytes - self.capacity() * self.slot_bytes()


class NumpyReplayBuffer(ReplayBuffer):
    """In-memory replay of steps, bounded by ``memory_budget_bytes`` (arrays only).

    ``add`` is vectorised over rows; only per-episode bookkeeping (linking a batch to the
    previous batch of the same episode) loops, once per episode in the batch.
    """

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config
        self.capacity = config.capacity()
        if self.capacity < 2:
            raise ValueError(
                f"memory budget {config.memory_budget_bytes} B holds {self.capacity} steps of "
                f"{config.slot_bytes()} B; raise memory_budget_bytes"
            )
        self._arrays = {
            name: np.zeros((self.capacity, *shape), dtype=dtype)
            for name, (shape, dtype) in config.columns().items()
            if not (name.startswith("image/") and config.image_device is not None)
        }
        self._device_frames = {
            name: torch.zeros((self.capacity, *shape), dtype=torch.uint8,
                              device=config.image_device)
            for name, shape in config.image_shapes.items() if config.image_device is not None
        }
        self._arrays["next_slot"][:] = -1
        self._arrays["row_id"][:] = -1
        # Compressed frames: a circular byte log in row order (pages are touched only as
        # the log first reaches them). ``_head``: bytes ever written (virtual offsets, as
        # frame_at holds); rows before ``_live_from`` have lost their frames.
        self._arena = np.zeros(config.arena_bytes(), np.uint8) if config.compressed else None
        self._codec = pa.Codec(config.image_codec) if config.compressed else None
        self._head = 0
        self._live_from = 0
        self._written = 0  # steps ever written; slot of row id r is r % capacity
        self._sampleable = 0
        self._pending: dict[tuple[Hashable, Hashable], tuple[int, int]] = {}
        self._prune_at = 1024
        self.dropped = 0
        """truncated steps dropped for want of a ``next_observation``."""
        self._rng = np.random.default_rng(config.seed)
        self._instructions: dict[str, int] = {"": 0}  # instruction -> its code

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring's arrays and frame arena (at most ``memory_budget_bytes``)."""
        return sum(a.nbytes for a in self._arrays.values()) + sum(
            t.numel() for t in self._device_frames.values()) + (
            0 if self._arena is None else self._arena.nbytes)

    @property
    def frame_bytes(self) -> int:
        """Bytes the held frames take (with a codec: the span of the arena they lie in)."""
        if self._arena is None:
            filled = min(self._written, self.capacity)
            return filled * sum(math.prod(s) for s in self.config.image_shapes.values())
        if self._live_from == self._written:
            return 0
        first = self._arrays[f"frame_at/{next(iter(self.config.image_shapes))}"]
        return self._head - int(first[self._live_from % self.capacity])

    def _put_frames(self, name: str, slots: np.ndarray, frames: np.ndarray) -> None:
        held = self._device_frames.get(name)
        if held is None:
            self._arrays[f"image/{name}"][slots] = frames
        else:
            held[torch.from_numpy(slots).to(held.device)] = torch.from_numpy(
                np.ascontiguousarray(frames)).to(held.device)

    def _take_frames(self, name: str, slots: np.ndarray) -> torch.Tensor:
        if self._arena is not None:
            return self._decode(name, slots)
        held = self._device_frames.get(name)
        if held is None:
            return torch.from_numpy(self._arrays[f"image/{name}"][slots])
        return held.index_select(0, torch.from_numpy(slots).to(held.device))

    def _encode(self, steps: StepBatch, order: np.ndarray, final_rows: np.ndarray
                ) -> tuple[bytes, np.ndarray]:
        """The frames of a batch's new rows (sorted step rows, then final frames), each
        camera's frame after the other, compressed one by one: (bytes, lengths[row, cam])."""
        assert self._codec is not None
        names = list(self.config.image_shapes)
        sources = [(steps.images, order), (steps.next_images, final_rows)]
        lengths = np.empty((len(order) + len(final_rows), len(names)), np.int32)
        parts: list[bytes] = []
        row = 0
        for frames, rows in sources:
            columns = [frames[n] for n in names] if len(rows) else []
            for i in rows.tolist():
                for c, column in enumerate(columns):
                    frame = np.ascontiguousarray(column[i], dtype=np.uint8)
                    packed = self._codec.compress(frame, asbytes=True)
                    if len(packed) >= frame.nbytes:  # the codec cannot shrink it: keep it raw
                        packed = frame.tobytes()
                    parts.append(packed)
                    lengths[row, c] = len(packed)
                row += 1
        return b"".join(parts), lengths

    def _make_room(self, nbytes: int) -> int:
        """Room for ``nbytes`` of frames in the arena, evicting the oldest rows whose
        frames it overwrites; returns the virtual offset to write them at."""
        assert self._arena is not None
        size = len(self._arena)
        if nbytes > size:
            raise ValueError(
                f"a batch's frames take {nbytes} B compressed, more than the {size} B frame "
                "arena; raise memory_budget_bytes or send smaller batches")
        start = self._head
        if start % size + nbytes > size:  # a batch's frames never wrap: skip the tail
            start += size - start % size
        cut = start + nbytes - size  # frames that begin before this are overwritten
        first = self._arrays[f"frame_at/{next(iter(self.config.image_shapes))}"]
        lo = self._live_from
        k = bisect.bisect_left(range(lo, self._written), cut,
                               key=lambda r: int(first[r % self.capacity]))
        if k:
            a = self._arrays
            gone = (lo + np.arange(k)) % self.capacity
            self._sampleable -= int(a["sampleable"][gone].sum())
            a["sampleable"][gone] = False
            a["row_id"][gone] = -1  # links to them (pending successors) now fail
            self._live_from = lo + k
        self._head = start + nbytes
        return start

    def _decode(self, name: str, slots: np.ndarray) -> torch.Tensor:
        assert self._arena is not None and self._codec is not None
        shape = self.config.image_shapes[name]
        raw = math.prod(shape)
        at = (self._arrays[f"frame_at/{name}"][slots] % len(self._arena)).tolist()
        length = self._arrays[f"frame_len/{name}"][slots].tolist()
        out = np.empty((len(slots), raw), np.uint8)
        for i, (o, k) in enumerate(zip(at, length, strict=True)):
            src = self._arena[o:o + k]
            out[i] = src if k == raw else np.frombuffer(
                self._codec.decompress(src, decompressed_size=raw), np.uint8)
        return torch.from_numpy(out.reshape(len(slots), *shape))

    def _draw(self, k: int) -> np.ndarray:
        """``k`` uniform slots among those written (with a codec: among rows whose
        frames are still held)."""
        if self._arena is not None:
            live = self._written - self._live_from
            return (self._live_from + self._rng.integers(0, live, size=k)) % self.capacity
        return self._rng.integers(0, min(self._written, self.capacity), size=k)

    def __len__(self) -> int:
        return self._sampleable

    def add(self, steps: StepBatch) -> int:
        n = len(steps)
        if n == 0:
            return 0
        self._check(steps)
        a = self._arrays

        # Sort by (robot, episode, step) so an episode's steps are adjacent and in order.
        _, robot_code = np.unique(steps.robot_id, return_inverse=True)
        _, episode_code = np.unique(steps.episode_id, return_inverse=True)
        stream = robot_code.astype(np.int64) * (int(episode_code.max()) + 1) + episode_code
        step = np.asarray(steps.step, dtype=np.int64)
        order = np.lexsort((step, stream))
        stream, step = stream[order], step[order]
        terminated = np.asarray(steps.terminated, dtype=bool)[order]
        truncated = (
            np.zeros(n, dtype=bool)
            if steps.truncated is None
            else np.asarray(steps.truncated, dtype=bool)[order] & ~terminated
        )
        ends = terminated | truncated
        has_next_in_batch = np.zeros(n, dtype=bool)
        has_next_in_batch[:-1] = (stream[1:] == stream[:-1]) & (step[1:] == step[:-1] + 1)
        has_next_in_batch &= ~ends
        needs_final = truncated if steps.next_observation is not None else np.zeros(n, bool)
        self.dropped += int((truncated & ~needs_final).sum())
        n_final = int(needs_final.sum())
        total = n + n_final
        if total > self.capacity:
            raise ValueError(
                f"a batch of {total} steps does not fit a ring of {self.capacity}; raise "
                "memory_budget_bytes or send smaller batches"
            )

        row_ids = self._written + np.arange(total, dtype=np.int64)
        slots = row_ids % self.capacity
        if self._arena is not None:  # before anything is written: eviction reads old rows
            blob, lengths = self._encode(steps, order, order[needs_final])
            start = self._make_room(len(blob))
            at = start + np.r_[0, np.cumsum(lengths, dtype=np.int64)[:-1]].reshape(lengths.shape)
            self._arena[start % len(self._arena):][:len(blob)] = np.frombuffer(blob, np.uint8)
            for c, name in enumerate(self.config.image_shapes):
                a[f"frame_at/{name}"][slots] = at[:, c]
                a[f"frame_len/{name}"][slots] = lengths[:, c]
        self._sampleable -= int(a["sampleable"][slots].sum())  # rows about to be overwritten

        step_slots, final_slots = slots[:n], slots[n:]
        next_slot = np.full(n, -1, dtype=np.int64)
        next_slot[:-1][has_next_in_batch[:-1]] = step_slots[1:][has_next_in_batch[:-1]]
        next_slot[terminated] = step_slots[terminated]
        next_slot[needs_final] = final_slots

        a["observation"][step_slots] = np.asarray(steps.observation)[order]
        a["action"][step_slots] = np.asarray(steps.action)[order]
        a["reward"][step_slots] = np.asarray(steps.reward)[order]
        a["terminated"][step_slots] = terminated
        a["policy_version"][step_slots] = np.asarray(steps.policy_version)[order]
        a["intervention"][step_slots] = (
            False if steps.intervention is None
            else np.asarray(steps.intervention, dtype=bool)[order])
        a["instruction"][step_slots] = self._codes(steps.instruction, n)[order]
        a["next_slot"][step_slots] = next_slot
        a["row_id"][slots] = row_ids
        a["sampleable"][step_slots] = next_slot >= 0
        # Frames are written through the inverse permutation: no sorted copy of a batch's
        # frames is ever made (they are most of its bytes).
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        for name in self.config.image_shapes if self._arena is None else ():
            self._put_frames(name, step_slots[rank], steps.images[name])
        if n_final:
            assert steps.next_observation is not None  # needs_final is all False otherwise
            a["observation"][final_slots] = np.asarray(steps.next_observation)[order][needs_final]
            final_rows = order[needs_final]  # original rows of the final slots, in order
            for name in self.config.image_shapes if self._arena is None else ():
                self._put_frames(name, final_slots, steps.next_images[name][final_rows])
            a["action"][final_slots] = 0.0
            a["reward"][final_slots] = 0.0
            a["terminated"][final_slots] = False
            a["policy_version"][final_slots] = a["policy_version"][step_slots[needs_final]]
            a["intervention"][final_slots] = False
            a["instruction"][final_slots] = 0
            a["next_slot"][final_slots] = -1
            a["sampleable"][final_slots] = False
        self._written += total
        self._live_from = max(self._live_from, self._written - self.capacity)
        made = int((next_slot >= 0).sum())

        # Link each episode's first step here to its predecessor from an earlier batch, and
        # remember each episode's last step until its successor comes.
        robot_ids = np.asarray(steps.robot_id)[order]
        episode_ids = np.asarray(steps.episode_id)[order]
        starts = np.flatnonzero(np.r_[True, stream[1:] != stream[:-1]])
        last = np.r_[starts[1:] - 1, n - 1]
        for first, final in zip(starts.tolist(), last.tolist(), strict=True):
            key = (robot_ids[first].item(), episode_ids[first].item())
            pred = self._pending.pop(key, None)
            if pred is not None and pred[1] == step[first] - 1:
                pred_slot = pred[0] % self.capacity
                if a["row_id"][pred_slot] == pred[0]:  # not yet overwritten
                    a["next_slot"][pred_slot] = step_slots[first]
                    a["sampleable"][pred_slot] = True
                    made += 1
            if not ends[final]:
                self._pending[key] = (int(row_ids[final]), int(step[final]))
        self._sampleable += made
        if len(self._pending) > self._prune_at:
            self._prune_pending()  # episodes whose successor never came and was overwritten
            self._prune_at = max(1024, 2 * len(self._pending))
        return made

    @property
    def interventions(self) -> int:
        """Sampleable transitions whose action a human chose."""
        filled = min(self._written, self.capacity)
        a = self._arrays
        return int((a["sampleable"][:filled] & a["intervention"][:filled]).sum())

    def sample(self, batch_size: int, current_version: int = 0, *, horizon: int = 1,
               interventions_only: bool = False) -> Batch:
        """Uniform transitions (see :class:`~learners.core.Sampler`).  ``horizon > 1``
        adds each one's action chunk (:attr:`Batch.action_chunk`, followed through the
        episode's links); ``interventions_only`` draws among steps a human chose and
        raises ``LookupError`` while there are none."""
        if self._sampleable == 0:
            raise LookupError("the replay buffer holds no complete transition yet")
        a = self._arrays
        filled = min(self._written, self.capacity)
        if interventions_only:
            valid = np.flatnonzero(a["sampleable"][:filled] & a["intervention"][:filled])
            if not len(valid):
                raise LookupError("the replay buffer holds no takeover step yet")
            idx = self._rng.choice(valid, size=batch_size)
        else:
            idx = self._draw(batch_size)
        for _ in range(0 if interventions_only else _REJECTION_ROUNDS):
            bad = ~a["sampleable"][idx]
            if not bad.any():
                break
            idx[bad] = self._draw(int(bad.sum()))
        else:
            bad = ~a["sampleable"][idx]
            if bad.any():
                valid = np.flatnonzero(a["sampleable"][:filled])
                idx[bad] = self._rng.choice(valid, size=int(bad.sum()))
        nxt = a["next_slot"][idx]
        version = a["policy_version"][idx]
        lag = current_version - version
        chunk = None
        if horizon > 1:
            # Follow the links: a terminal step links to itself, a truncated one to its
            # never-sampled final slot (action 0) — in both cases the chunk repeats the
            # last real action from there on.  Drawn among takeovers, a chunk also ends
            # where the takeover does: the policy's own actions after the operator handed
            # back are not targets (HG-DAgger learns from takeover segments only).
            slots = np.empty((batch_size, horizon), np.int64)
            slots[:, 0] = idx
            for k in range(1, horizon):
                prev = slots[:, k - 1]
                step = a["next_slot"][prev]
                real = (step >= 0) & a["sampleable"][np.maximum(step, 0)] & (step != prev)
                if interventions_only:
                    real &= a["intervention"][np.maximum(step, 0)]
                slots[:, k] = np.where(real, step, prev)
            chunk = torch.from_numpy(a["action"][slots])
        return Batch(
            observation=torch.from_numpy(a["observation"][idx]),
            action=torch.from_numpy(a["action"][idx]),
            reward=torch.from_numpy(a["reward"][idx]),
            next_observation=torch.from_numpy(a["observation"][nxt]),
            terminated=torch.from_numpy(a["terminated"][idx].astype(np.float32)),
            policy_version=torch.from_numpy(version),
            intervention=torch.from_numpy(a["intervention"][idx]),
            action_chunk=chunk,
            instruction=self._texts(a["instruction"][idx]),
            images={n: self._take_frames(n, idx) for n in self.config.image_shapes},
            next_images={n: self._take_frames(n, nxt) for n in self.config.image_shapes},
            stats={
                "replay/version_lag_mean": float(lag.mean()),
                "replay/version_lag_max": float(lag.max()),
                "replay/size": float(self._sampleable),
            },
        )

    def _codes(self, instruction: np.ndarray | None, n: int) -> np.ndarray:
        """(n,) codes of a batch's instructions, new ones added to the vocabulary."""
        if instruction is None:
            return np.zeros(n, np.int32)
        words, inverse = np.unique(np.asarray(instruction, np.str_), return_inverse=True)
        codes = np.array([self._instructions.setdefault(str(w), len(self._instructions))
                          for w in words], np.int32)
        return codes[inverse.reshape(-1)]

    def _texts(self, codes: np.ndarray) -> tuple[str, ...] | None:
        """The sampled rows' instructions (None while none was ever recorded)."""
        if len(self._instructions) == 1:
            return None
        words = np.asarray(list(self._instructions), dtype=np.str_)
        return tuple(words[codes].tolist())

    def _check(self, steps: StepBatch) -> None:
        n = len(steps)
        expect: list[tuple[str, np.ndarray | None, tuple[int, ...]]] = [
            ("observation", steps.observation, self.config.observation_shape),
            ("action", steps.action, self.config.action_shape),
            ("reward", steps.reward, ()),
            ("terminated", steps.terminated, ()),
            ("policy_version", steps.policy_version, ()),
            ("intervention", steps.intervention, ()),
            ("instruction", steps.instruction, ()),
            ("robot_id", steps.robot_id, ()),
            ("episode_id", steps.episode_id, ()),
            ("truncated", steps.truncated, ()),
            ("next_observation", steps.next_observation, self.config.observation_shape),
        ]
        for name, image_shape in self.config.image_shapes.items():
            expect.append((f"images[{name!r}]", steps.images.get(name), image_shape))
            if steps.next_observation is not None:
                expect.append((f"next_images[{name!r}]", steps.next_images.get(name), image_shape))
        for name, col, shape in expect:
            if col is None:
                if name.startswith("images"):
                    raise ValueError(f"step batch lacks {name}")
                continue
            if tuple(np.shape(col)) != (n, *shape):
                raise ValueError(
                    f"step batch column {name} has shape {np.shape(col)}, expected {(n, *shape)}"
                )

    def _prune_pending(self) -> None:
        row_id = self._arrays["row_id"]
        self._pending = {
            key: (rid, step)
            for key, (rid, step) in self._pending.items()
            if row_id[rid % self.capacity] == rid
        }


def concat_batches(batches: Sequence[Batch], generator: torch.Generator | None = None) -> Batch:
    """Rows of all ``batches``, shuffled together (so any later split mixes them too)."""
    total = sum(len(b) for b in batches)
    perm = torch.randperm(total, generator=generator)

    def cat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(ts))[perm]

    first = batches[0]
    return Batch(
        observation=cat([b.observation for b in batches]),
        action=cat([b.action for b in batches]),
        reward=cat([b.reward for b in batches]),
        next_observation=cat([b.next_observation for b in batches]),
        terminated=cat([b.terminated for b in batches]),
        policy_version=cat([b.policy_version for b in batches]),
        intervention=(None if any(b.intervention is None for b in batches)
                      else cat([b.intervention for b in batches if b.intervention is not None])),
        action_chunk=(None if any(b.action_chunk is None for b in batches)
                      else cat([b.action_chunk for b in batches if b.action_chunk is not None])),
        instruction=(None if all(b.instruction is None for b in batches) else tuple(
            np.concatenate([np.asarray(b.instruction or ("",) * len(b), np.str_)
                            for b in batches])[perm.numpy()].tolist())),
        images={n: cat([b.images[n] for b in batches]) for n in first.images},
        next_images={n: cat([b.next_images[n] for b in batches]) for n in first.next_images},
    )


class MixingSampler(Sampler):
    """RLPD's symmetric sampling: a fixed fraction of every batch from prior data.

    ``prior`` holds demonstrations, interventions or earlier experiments' transitions;
    ``online`` this experiment's. Each batch has exactly ``round(batch_size *
    prior_fraction)`` prior rows, shuffled among the online ones. Stats are the online
    sampler's, the prior sampler's under ``replay/prior/``, and ``replay/prior_fraction``.
    """

    def __init__(
        self, online: Sampler, prior: Sampler, prior_fraction: float = 0.5, seed: int = 0
    ) -> None:
        if not 0.0 <= prior_fraction <= 1.0:
            raise ValueError(f"prior_fraction must lie in [0, 1], got {prior_fraction}")
        self.online = online
        self.prior = prior
        self.prior_fraction = prior_fraction
        self._generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int, current_version: int = 0) -> Batch:
        n_prior = round(batch_size * self.prior_fraction)
        parts: list[Batch] = []
        stats: dict[str, float] = {"replay/prior_fraction": n_prior / batch_size}
        if n_prior < batch_size:
            online = self.online.sample(batch_size - n_prior, current_version)
            parts.append(online)
            stats.update(online.stats)
        if n_prior:
            prior = self.prior.sample(n_prior, current_version)
            parts.append(prior)
            stats.update(
                {k.replace("replay/", "replay/prior/", 1): v for k, v in prior.stats.items()}
            )
        return dataclasses.replace(concat_batches(parts, self._generator), stats=stats)


class TakeoverSampler(Sampler):
    """Where imitation and HIL-SERL draw from: this experiment's buffer (``online``), its
    takeover steps, and prior data (``prior``: demonstrations, earlier experiments).

    ``mode``:

    * ``"all"`` — like :class:`MixingSampler`: ``prior_fraction`` of each batch from
      ``prior`` (when it holds anything), the rest from every online step (BC);
    * ``"takeovers"`` — only steps a human chose: online takeover steps and all prior
      rows, in proportion to how many each holds (HG-DAgger's aggregated data set);
    * ``"routed"`` — HIL-SERL's RLPD: ``prior_fraction`` of each batch is the demo half,
      drawn from prior rows and online takeover steps in proportion to their counts; the
      rest from every online step.

    ``horizon > 1`` adds action chunks (:attr:`Batch.action_chunk`).  Stats add
    ``replay/takeover_fraction`` (rows of the batch a human chose) and
    ``replay/takeover_steps`` (online takeover steps held).
    """

    def __init__(self, online: NumpyReplayBuffer, prior: NumpyReplayBuffer | None = None,
                 *, mode: str = "all", prior_fraction: float = 0.5, horizon: int = 1,
                 seed: int = 0) -> None:
        if mode not in ("all", "takeovers", "routed"):
            raise ValueError(f"mode must be all, takeovers or routed, not {mode!r}")
        if not 0.0 <= prior_fraction <= 1.0:
            raise ValueError(f"prior_fraction must lie in [0, 1], got {prior_fraction}")
        self.online, self.prior = online, prior
        self.mode, self.prior_fraction, self.horizon = mode, prior_fraction, horizon
        self._rng = np.random.default_rng(seed)
        self._generator = torch.Generator().manual_seed(seed)

    def _split(self, n: int, n_prior_pool: int, n_took_pool: int) -> tuple[int, int]:
        """How many of ``n`` demo rows come from prior and from online takeovers."""
        pool = n_prior_pool + n_took_pool
        if pool == 0 or n == 0:
            return 0, 0
        from_prior = int(self._rng.binomial(n, n_prior_pool / pool))
        return from_prior, n - from_prior

    def sample(self, batch_size: int, current_version: int = 0) -> Batch:
        n_prior_pool = len(self.prior) if self.prior is not None else 0
        n_took_pool = self.online.interventions
        if self.mode == "takeovers":
            n_any, (n_prior, n_took) = 0, self._split(batch_size, n_prior_pool, n_took_pool)
            if n_prior + n_took == 0:
                raise LookupError("no takeover or demonstration step to learn from yet")
        elif self.mode == "routed":
            n_demo = round(batch_size * self.prior_fraction)
            n_prior, n_took = self._split(n_demo, n_prior_pool, n_took_pool)
            n_any = batch_size - n_prior - n_took
        else:
            n_prior = round(batch_size * self.prior_fraction) if n_prior_pool else 0
            n_any, n_took = batch_size - n_prior, 0
        parts: list[Batch] = []
        stats: dict[str, float] = {}
        for source, n, only in ((self.online, n_any, False), (self.online, n_took, True),
                                (self.prior, n_prior, False)):
            if n and source is not None:
                part = source.sample(n, current_version, horizon=self.horizon,
                                     interventions_only=only)
                parts.append(part)
                if source is self.online and not only:
                    stats.update(part.stats)
        batch = concat_batches(parts, self._generator) if len(parts) > 1 else parts[0]
        took = 0.0 if batch.intervention is None else float(batch.intervention.float().mean())
        stats |= {"replay/takeover_fraction": took,
                  "replay/takeover_steps": float(n_took_pool),
                  "replay/prior_fraction": n_prior / batch_size}
        return dataclasses.replace(batch, stats=stats)
