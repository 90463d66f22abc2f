"""`userctl security init|trust-key|env|acls` — the secured cluster (issue 16,
infra/security.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from infra import pki, security
from infra.broker import Broker, BrokerSettings
from topics import signing
from topics.settings import KafkaSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("security", help="certificates, SCRAM users, ACLs and weight signing keys")
    ssub = p.add_subparsers(dest="security_cmd", required=True)
    s = ssub.add_parser("init", help="make the CA, certificates, passwords and signing key "
                        "(idempotent); with the secure broker up, create users and ACLs")
    s.add_argument("--name", action="append", default=[],
                   help="extra host name/IP for the broker certificate (repeatable)")
    s.set_defaults(func=_init)
    s = ssub.add_parser("trust-key", help="trust a weights signing key; others expire after "
                        "--grace-s (key rotation)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--new", action="store_true",
                   help="make a new learner signing key (the old file is kept beside it)")
    g.add_argument("--public-key", help="an Ed25519 public key: 64 hex digits or a PEM file")
    s.add_argument("--grace-s", type=float, default=3600.0,
                   help="seconds the other keys stay trusted (default 3600; 0: at once)")
    s.set_defaults(func=_trust_key)
    s = ssub.add_parser("env", help="print the environment a role needs (no secret in it)")
    s.add_argument("principal", help="agent-<site>, controller, sink, rewards, learner, "
                   "inference, host, operator")
    s.set_defaults(func=_env)
    s = ssub.add_parser("acls", help="list the ACLs `security init` creates (the plan)")
    s.set_defaults(func=_acls)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _init(args: argparse.Namespace) -> int:
    broker = Broker(BrokerSettings())
    sites = KafkaSettings().sites.sites
    result = security.init(broker.home, host=broker.settings.host, sites=sites,
                           extra_names=args.name)
    for path in result.created:
        print(f"made {path}")
    if not result.created:
        print(f"everything exists in {security.Paths(broker.home).dir}")
    if broker.settings.secure and broker.pid() is not None:
        applied = security.apply(broker.home, broker.admin_settings(), sites)
        print(f"{applied.users} SCRAM users and {applied.acls} ACLs in place on "
              f"{broker.settings.bootstrap}")
    else:
        print("users and ACLs are created when the secure broker starts "
              "(`userctl broker start --secure`)")
    return 0


def _trust_key(args: argparse.Namespace) -> int:
    paths = security.Paths(BrokerSettings().home)
    if args.new:
        key = signing.SigningKey.generate()
        if paths.signing_key.exists():
            old = signing.SigningKey.load(paths.signing_key)
            paths.signing_key.rename(paths.dir / f"weights-signing.{old.key_id}.key")
        pki.write_secret(paths.signing_key, key.pem())
        public = key.public
        print(f"new signing key {key.key_id} in {paths.signing_key}; restart learners to use it")
    else:
        public = _public_key(args.public_key)
    trusted = signing.TrustedKeys.load(paths.trusted_keys).trust(
        public, expire_others_after_s=args.grace_s, comment="userctl security trust-key")
    trusted.save(paths.trusted_keys)
    for k in trusted.keys:
        until = f"until {k.not_after.isoformat()}" if k.not_after else "until rotated"
        print(f"trusted {k.key_id} from {k.not_before.isoformat()} {until}")
    print(f"wrote {paths.trusted_keys}; agents re-read it on their next version")
    return 0


def _public_key(text: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization

    path = Path(text)
    if path.exists():
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise SystemExit(f"{path} is not an Ed25519 public key")
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise SystemExit("--public-key takes 64 hex digits or a PEM file") from None


def _env(args: argparse.Namespace) -> int:
    settings = BrokerSettings()
    for key, value in security.client_env(settings.home, args.principal,
                                          settings.bootstrap).items():
        print(f"export {key}={value}")
    return 0


def _acls(args: argparse.Namespace) -> int:
    for g in security.acl_plan(KafkaSettings().sites.sites):
        kind = "prefix" if g.prefixed else "literal"
        print(f"User:{g.principal:<14} {g.operation:<17} {g.resource} {g.name} ({kind})")
    return 0
