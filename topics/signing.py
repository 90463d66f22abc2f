"""Signed weights: the learner signs each manifest with Ed25519, robots verify it against a
file of trusted public keys before fetching a single chunk (issue 16).

What is signed is the manifest's canonical JSON — every field but ``signature``: the
experiment, version, tensor table, whole-blob and per-chunk SHA-256, chunk offsets,
lineage — so a signature over it vouches for every byte of the blob (through the
hashes a robot checks anyway).  A signed old manifest stays validly signed; replays are
refused by version (``agents.weights``), not here.

Trust is a JSON file (:class:`TrustedKeys`), distributed to robots with their
configuration and changed by ``userctl security trust-key``: a key is trusted between
its ``not_before`` and ``not_after``; rotating trusts the new key and gives the old one a
``not_after`` a grace period ahead.  Signing needs only the private key file
(``USER_WEIGHTS_SIGNING_KEY``); a robot never holds one.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas import events

__all__ = [
    "SignatureRefused",
    "SigningKey",
    "TrustedKey",
    "TrustedKeys",
    "canonical",
    "key_id",
    "sign",
]

#: Why a manifest's signature is refused (``SignatureRefused.reason``).
REASONS = ("unsigned", "untrusted_key", "expired_key", "bad_signature")


class SignatureRefused(Exception):
    """A manifest that no trusted key vouches for; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical(manifest: events.WeightsManifestV1) -> bytes:
    """The bytes a signature covers: the manifest's JSON without ``signature``, keys
    sorted, no whitespace (the same on every machine and Python version)."""
    data = manifest.model_dump(mode="json", exclude={"signature"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def key_id(public: Ed25519PublicKey) -> str:
    """A public key's id: the first 16 hex digits of the SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_hex(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


class SigningKey:
    """The learner's Ed25519 private key (PKCS#8 PEM in a 0600 file)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read ``path``; raises ``PermissionError`` when group/others may read it and
        ``ValueError`` when it is not an Ed25519 key."""
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"signing key {path} is readable by others; chmod 600 it")
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def pem(self) -> bytes:
        return self._private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    def sign_bytes(self, data: bytes) -> bytes:
        return self._private.sign(data)


def sign(manifest: events.WeightsManifestV1, key: SigningKey) -> events.WeightsManifestV1:
    """``manifest`` with ``key``'s signature over :func:`canonical` (any old one replaced)."""
    signature = events.ManifestSignature(key_id=key.key_id,
                                         ed25519=key.sign_bytes(canonical(manifest)).hex())
    return manifest.model_copy(update={"signature": signature})


class TrustedKey(BaseModel):
    """A public key robots accept signatures of, and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="raw Ed25519 key, hex")
    not_before: AwareDatetime
    not_after: AwareDatetime | None = Field(None, description="None: until rotated")
    comment: str = ""

    def valid_at(self, when: datetime) -> bool:
        return self.not_before <= when and (self.not_after is None or when < self.not_after)


class TrustedKeys(BaseModel):
    """The trusted-keys file: every key robots accept, with validity windows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: tuple[TrustedKey, ...] = ()

    @classmethod
    def load(cls, path: Path) -> TrustedKeys:
        """Read ``path``; a missing file trusts nothing (every version is refused)."""
        if not path.exists():
            return cls()
        return cls.model_validate_json(path.read_text())

    def save(self, path: Path) -> None:
        """Write atomically (robots may be reading it); public data, mode 0644."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)

    def trust(self, public: Ed25519PublicKey, *, now: datetime | None = None,
              expire_others_after_s: float | None = None, comment: str = "") -> TrustedKeys:
        """These keys plus ``public`` (trusted from ``now``); with
        ``expire_others_after_s``, every other key still open expires that long after
        ``now`` (key rotation with a grace period)."""
        from datetime import timedelta

        now = now or datetime.now(UTC)
        kid = key_id(public)
        kept = []
        for k in self.keys:
            if k.key_id == kid:
                continue
            if expire_others_after_s is not None:
                ends = now + timedelta(seconds=expire_others_after_s)
                if k.not_after is None or k.not_after > ends:
                    k = k.model_copy(update={"not_after": ends})
            kept.append(k)
        kept.append(TrustedKey(key_id=kid, public_key=public_hex(public), not_before=now,
                               comment=comment))
        return TrustedKeys(keys=tuple(kept))

    def verify(self, manifest: events.WeightsManifestV1, now: datetime | None = None) -> str:
        """The key id that validly signed ``manifest``; raises :class:`SignatureRefused`."""
        sig = manifest.signature
        if sig is None:
            raise SignatureRefused("unsigned", f"{manifest.experiment_id} v{manifest.version} "
                                   "carries no signature")
        key = next((k for k in self.keys if k.key_id == sig.key_id), None)
        if key is None:
            raise SignatureRefused("untrusted_key", f"signed by key {sig.key_id}, which is not "
                                   "in the trusted keys")
        now = now or datetime.now(UTC)
        if not key.valid_at(now):
            raise SignatureRefused("expired_key", f"key {sig.key_id} is trusted only from "
                                   f"{key.not_before.isoformat()} until "
                                   f"{key.not_after.isoformat() if key.not_after else '-'}")
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.public_key))
        try:
            public.verify(bytes.fromhex(sig.ed25519), canonical(manifest))
        except InvalidSignature:
            raise SignatureRefused("bad_signature", f"the signature of key {sig.key_id} does "
                                   "not match this manifest") from None
        return key.key_id
