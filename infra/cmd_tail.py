"""`userctl tail TOPIC` — decode and print any catalog topic's records.

Control events print as one line each (``--json``: one JSON object per line); a
transition batch prints as a table of its steps.  Records that do not decode are shown
as ``REJECTED reason: detail`` — tail only reads: it commits nothing and writes nothing
to ``dlq``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
from confluent_kafka import KafkaException

from schemas import events, transitions
from topics import catalog
from topics.consumer import Start, TopicReader
from topics.settings import KafkaSettings, UnknownSiteError
from topics.validation import Accepted, Rejected

#: Envelope fields shown in the line prefix rather than the body.
_ENVELOPE = ("event_id", "schema_name", "schema_version", "site", "robot_id", "experiment_id",
             "produced_at")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tail", help="decode and print a topic's records",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("topic", choices=[s.name for s in catalog.CATALOG], metavar="TOPIC",
                   help="one of: " + ", ".join(s.name for s in catalog.CATALOG))
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the oldest record (default: the last --limit per partition)")
    p.add_argument("--site", help="only this site (its partitions, on site-partitioned topics)")
    p.add_argument("--robot", help="only this robot's records")
    p.add_argument("-n", "--limit", type=int, default=None,
                   help="print at most N records (default without --from-beginning: last 10)")
    p.add_argument("--json", action="store_true", help="one JSON object per record")
    p.add_argument("--steps", type=int, default=20,
                   help="rows shown per transition batch (0: all; default 20)")
    p.set_defaults(func=_tail)


def _tail(args: argparse.Namespace) -> int:
    settings = KafkaSettings()
    spec = catalog.spec(args.topic)
    if args.limit is not None and args.limit <= 0:
        print("userctl tail: --limit must be positive", file=sys.stderr)
        return 2
    sites: Sequence[str] = ()
    if args.site:
        try:
            settings.sites.partitions_of(args.site)
        except UnknownSiteError as exc:
            print(f"userctl tail: {exc}", file=sys.stderr)
            return 2
        sites = (args.site,)
    start: Start = "beginning" if args.from_beginning else int(args.limit or 10)
    printed = 0
    try:
        with TopicReader(settings, spec, start=start, sites=sites) as reader:
            for result in reader.read(follow=args.follow):
                if not _wanted(result, args.site, args.robot):
                    continue
                text = _as_json(result) if args.json else _as_text(result, args.steps)
                print(text, flush=True)
                printed += 1
                if args.limit and printed >= args.limit:
                    break
    except (LookupError, KafkaException) as exc:
        print(f"userctl tail: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `userctl tail … | head`
        return 0
    return 0


def _wanted(result: Accepted | Rejected, site: str | None, robot: str | None) -> bool:
    if isinstance(result, Rejected):
        return site is None and robot is None
    event = result.event if isinstance(result.event, events.Envelope) else result.event.event
    return (site is None or event.site == site) and (robot is None or event.robot_id == robot)


def _where(result: Accepted | Rejected) -> str:
    r = result.record
    return f"{r.topic}[{r.partition}]@{r.offset}"


# -- JSON -------------------------------------------------------------------------------


def _array_json(arr: np.ndarray) -> object:
    if arr.dtype == np.uint8 and arr.ndim >= 2:
        return {"shape": list(arr.shape), "dtype": "uint8", "mean": float(arr.mean())}
    return arr.tolist()


def _batch_json(batch: transitions.AnyBatch) -> dict[str, object]:
    cols = batch.as_columns()
    steps: list[dict[str, object]] = []
    finals = np.flatnonzero(batch.truncated)
    for i in range(len(batch)):
        row: dict[str, object] = {k: _array_json(v[i]) if v.ndim > 1 else v[i].item()
                                  for k, v in cols.items()
                                  if k not in ("robot_id", "incarnation", "final_observation")}
        if not batch.intervention[i]:
            row["policy_action"] = None
        for name, img in batch.images.items():
            row[f"images.{name}"] = _array_json(img[i])
        for name, arr in batch.info.items():
            row[f"info.{name}"] = arr[i].tolist()
        if batch.truncated[i]:
            j = int(np.searchsorted(finals, i))
            row["final_observation"] = batch.final_observation[j].tolist()
        steps.append(row)
    return {"event": batch.event.model_dump(mode="json"), "steps": steps}


def _as_json(result: Accepted | Rejected) -> str:
    r = result.record
    out: dict[str, object] = {"topic": r.topic, "partition": r.partition, "offset": r.offset,
                              "key": None if r.key is None else r.key.decode("utf-8", "replace")}
    if isinstance(result, Rejected):
        out.update(rejected=result.reason.value, detail=result.detail)
    elif isinstance(result.event, events.Envelope):
        out["event"] = result.event.model_dump(mode="json")
        if isinstance(result.event, events.WeightsChunkV1):
            out["data_bytes"] = len(result.event.data)
    else:
        out.update(_batch_json(result.event))
    return json.dumps(out)


# -- text -------------------------------------------------------------------------------


def _who(event: events.Envelope) -> str:
    parts = [f"{k}={getattr(event, k)}" for k in ("site", "robot_id", "experiment_id")
             if getattr(event, k) is not None]
    return " ".join(p.replace("robot_id=", "robot=").replace("experiment_id=", "experiment=")
                    for p in parts)


def _as_text(result: Accepted | Rejected, max_steps: int) -> str:
    if isinstance(result, Rejected):
        return f"{_where(result)}  REJECTED {result.reason.value}: {result.detail}"
    payload = result.event
    if not isinstance(payload, events.Envelope):
        return _batch_text(_where(result), payload, max_steps)
    body = payload.model_dump(mode="json", exclude=set(_ENVELOPE))
    if isinstance(payload, events.WeightsChunkV1):
        body["data_bytes"] = len(payload.data)
    head = f"{_where(result)}  {payload.schema_name} v{payload.schema_version}"
    return f"{head}  {_who(payload)}  {json.dumps(body, separators=(',', ':'))}"


def _vec(arr: np.ndarray, width: int = 4) -> str:
    flat = arr.reshape(-1)
    shown = " ".join(f"{x:+.3f}" for x in flat[:width])
    return f"[{shown}{' …' if flat.size > width else ''}]"


def _batch_text(where: str, batch: transitions.AnyBatch, max_steps: int) -> str:
    e = batch.event
    cams = ",".join(f"{k}({v.shape[1]}x{v.shape[2]})" for k, v in batch.images.items())
    head = (f"{where}  {e.schema_name} v{e.schema_version}  {_who(e)}  "
            f"incarnation={e.incarnation}  steps={len(batch)}"
            + (f"  cameras={cams}" if cams else "")
            + (f"  info={','.join(batch.info)}" if batch.info else "")
            + (f"  reward_fn={batch.reward_fn}"
               if isinstance(batch, transitions.RewardedTransitionBatch) else ""))
    header = ["EPISODE", "STEP", "SEQ", "POLICY", "OBSERVATION", "ACTION", "PROPOSED",
              "TRUNC"]
    rewarded = isinstance(batch, transitions.RewardedTransitionBatch)
    if rewarded:
        header += ["REWARD", "SUCCESS", "TERM"]
    rows = [header]
    n = len(batch) if max_steps <= 0 else min(max_steps, len(batch))
    for i in range(n):
        row = [str(batch.episode_id[i]), str(batch.step[i]), str(batch.seq[i]),
               str(batch.policy_version[i]), _vec(batch.observation[i]),
               _vec(batch.action[i]),
               _vec(batch.policy_action[i]) if batch.intervention[i] else "-",
               (str(batch.end_reason[i]) or "yes") if batch.truncated[i] else ""]
        if isinstance(batch, transitions.RewardedTransitionBatch):
            row += [f"{batch.reward[i]:+.4f}", "yes" if batch.success[i] else "",
                    "yes" if batch.terminated[i] else ""]
        rows.append(row)
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = [head] + ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
                      .rstrip() for r in rows]
    if n < len(batch):
        lines.append(f"  … {len(batch) - n} more steps (--steps 0 shows all)")
    return "\n".join(lines)
