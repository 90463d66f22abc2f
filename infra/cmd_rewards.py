"""`userctl rewards list|run NAME@VERSION|train|label|labels` — reward functions, their
stream jobs, learned rewards and the people's labels these can learn from."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from pipeline import reward_job, rewards
from topics.settings import KafkaSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rewards", help="list reward functions; run one as a faust job")
    rsub = p.add_subparsers(dest="rewards_cmd", required=True)
    s = rsub.add_parser("list", help="registered reward functions (name@version)")
    s.set_defaults(func=_list)
    s = rsub.add_parser(
        "run", help="score transitions.raw into transitions with one reward function "
                    "(at-least-once; the Delta sink drops repeats)")
    s.add_argument("reward", metavar="NAME@VERSION")
    s.add_argument("--topic-suffix", default="", help="appended to topic names "
                   "(test namespaces)")
    s.add_argument("--datadir", type=Path, default=None,
                   help="faust's local state directory")
    s.set_defaults(func=_run)
    s = rsub.add_parser(
        "train", help="train a success classifier on camera frames from Delta and register "
                      "it as NAME@VERSION (a learned reward)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--experiment", required=True, help="experiment whose history to learn from")
    s.add_argument("--labels", default=None, metavar="NAME@VERSION|human",
                   help="reward function whose success column labels the frames (default: "
                        "the only one that scored the experiment), or 'human': people's "
                        "labels (`userctl rewards label`) over the raw steps")
    s.add_argument("--camera", default="overhead", help="camera the classifier reads")
    s.add_argument("--root", type=Path, default=None,
                   help="Delta root (default: the sink's, USER_SINK_ROOT)")
    s.add_argument("--epochs", type=int, default=10, help="passes over the training frames")
    s.add_argument("--max-frames", type=int, default=20_000,
                   help="frames read at most (every success frame, a share of the rest)")
    s.add_argument("--threshold", type=float, default=0.5, help="success when p >= this")
    s.set_defaults(func=_train)
    s = rsub.add_parser(
        "label", help="label an episode a success or a failure, for learned rewards (an "
                      "event on the labels topic; an episode's latest label counts)")
    s.add_argument("experiment")
    s.add_argument("robot_id")
    s.add_argument("episode_id")
    verdict = s.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--success", action="store_true", help="the episode succeeded")
    verdict.add_argument("--failure", action="store_true", help="the episode failed")
    s.add_argument("--from-step", type=int, default=None, metavar="STEP",
                   help="with --success: the first step whose frame shows success (and "
                        "every later one); default: the last step only")
    s.add_argument("--by", default=os.environ.get("USER") or "operator",
                   help="who labels (default: $USER)")
    s.add_argument("--note", default="", help="free text kept with the label")
    s.set_defaults(func=_label)
    s = rsub.add_parser("labels", help="an experiment's episode labels (latest per episode)")
    s.add_argument("experiment")
    s.set_defaults(func=_labels)


def _list(args: argparse.Namespace) -> int:
    for rid, entry in rewards.available().items():
        needs = f" (info: {', '.join(entry.needs)})" if entry.needs else ""
        print(f"{rid:24} {entry.doc.splitlines()[0] if entry.doc else ''}{needs}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from pipeline import sink
    from pipeline.rewards import classifier
    from topics import tables

    if not re.fullmatch(r"[a-z][a-z0-9_.-]*", args.name):
        raise SystemExit(f"userctl rewards train: {args.name!r} is not a reward name "
                         "(lowercase letters, digits, ._-)")
    root = args.root or sink.SinkSettings().root
    labels = args.labels
    if labels == classifier.HUMAN:
        try:
            frames, success, robots, episodes = classifier.labelled_frames(
                root, args.experiment, classifier.human_labels(KafkaSettings(), args.experiment),
                args.camera, max_frames=args.max_frames)
        except LookupError as exc:
            raise SystemExit(f"userctl rewards train: {exc}") from None
    elif labels is None:
        try:
            dataset = DeltaTable(str(tables.table_path(root, tables.TRANSITIONS))
                                 ).to_pyarrow_dataset()
        except Exception as exc:  # deltalake's own error types
            raise SystemExit(f"userctl rewards train: no transitions table under {root}: "
                             f"{exc}") from None
        fns = pc.unique(dataset.to_table(
            columns=["reward_fn"],
            filter=pc.field(tables.PARTITION_COLUMN) == args.experiment).column("reward_fn"))
        names = sorted(str(f) for f in fns.to_pylist())
        if len(names) != 1:
            raise SystemExit(f"userctl rewards train: experiment {args.experiment!r} was scored "
                             f"by {names or 'nothing'}; pick the labels with --labels")
        labels = names[0]
    if labels != classifier.HUMAN:
        try:
            frames, success, robots, episodes = classifier.training_frames(
                root, args.experiment, labels, args.camera, max_frames=args.max_frames)
        except LookupError as exc:
            raise SystemExit(f"userctl rewards train: {exc}") from None
    heldout = classifier.heldout_episode(robots, episodes)
    net, quality = classifier.train(frames, success, heldout, epochs=args.epochs,
                                    threshold=args.threshold)
    version = classifier.next_version(args.name)
    record = classifier.Record(
        name=args.name, version=version, camera=args.camera,
        image_size=(int(frames.shape[1]), int(frames.shape[2])), channels=16,
        threshold=args.threshold, experiment=args.experiment, labels=labels,
        train_frames=int((~heldout).sum()), heldout_frames=int(heldout.sum()),
        heldout_episodes=len(set(zip(robots[heldout].tolist(), episodes[heldout].tolist(),
                                     strict=True))),
        precision=quality["precision"], recall=quality["recall"], trained_at=classifier.now())
    path = classifier.save(net, record)
    print(f"registered {record.id}: {args.camera} frames of {args.experiment} labelled by "
          f"{labels}; {record.train_frames} training frames, held-out {record.heldout_frames} "
          f"frames of {record.heldout_episodes} episodes: precision {record.precision:.3f}, "
          f"recall {record.recall:.3f} ({path})")
    return 0


def _label(args: argparse.Namespace) -> int:
    from schemas import events
    from topics import catalog
    from topics.producer import EventProducer

    if args.failure and args.from_step is not None:
        raise SystemExit("userctl rewards label: --from-step goes with --success only")
    event = events.EpisodeLabeledV1(
        experiment_id=args.experiment, robot_id=args.robot_id, episode_id=args.episode_id,
        success=args.success, success_from_step=args.from_step, labeled_by=args.by,
        note=args.note)
    producer = EventProducer(KafkaSettings(), role="cli")
    producer.send(catalog.LABELS, event)
    producer.flush(30.0)
    what = ("success" + (f" from step {args.from_step}" if args.from_step is not None else "")
            if args.success else "failure")
    print(f"labelled {args.experiment} {args.robot_id} {args.episode_id}: {what}")
    return 0


def _labels(args: argparse.Namespace) -> int:
    from pipeline.rewards import classifier

    try:
        labels = classifier.human_labels(KafkaSettings(), args.experiment)
    except LookupError as exc:
        raise SystemExit(f"userctl rewards labels: {exc}") from None
    if not labels:
        print(f"no labels for {args.experiment}; add one with `userctl rewards label`")
    for (robot, episode), e in sorted(labels.items()):
        verdict = ("success" + (f" from step {e.success_from_step}"
                                if e.success_from_step is not None else "")
                   if e.success else "failure")
        print(f"{robot:24} {episode:24} {verdict:24} {e.labeled_by} "
              f"{e.produced_at:%Y-%m-%d %H:%M} {e.note}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        fn = rewards.lookup(args.reward)
    except KeyError as exc:
        raise SystemExit(f"userctl rewards run: {exc.args[0]}") from None
    reward_job.run(KafkaSettings(), fn, topic_suffix=args.topic_suffix, datadir=args.datadir,
                   loglevel=os.environ.get("USER_LOG_LEVEL", "INFO"))
    return 0
