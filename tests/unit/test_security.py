"""Security without a broker: the CA, secret files, signed manifests, key rotation, the ACL
plan, client settings, and the subscriber refusing unsigned / wrongly signed / replayed
versions (issue 16)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from agents.weights import SubscriberSettings, WeightsSubscriber
from infra import pki, security, supervisor
from learners.weights_sync import InMemoryWeightsSink, WeightsPublisher, WeightSyncSettings
from schemas import events
from tests.unit.test_weights_sync import EXP, SPEC, MemorySource, published, snapshot
from topics import catalog, mirror_heartbeats, signing
from topics.settings import KafkaSettings

SITES = {"lab-a": (0, 1), "lab-b": (2, 3)}


# -- the CA ------------------------------------------------------------------------------------


def test_the_ca_issues_server_certificates_for_the_broker_names_and_a_jvm_keystore(
        tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("test CA")
    ca.save(tmp_path)
    again = pki.CertificateAuthority.load(tmp_path)
    issued = again.issue("broker", sans=("127.0.0.1", "localhost"), server=True)
    ca.verify(issued)  # signed by the CA saved and loaded
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert issued.common_name == "broker"
    store = pkcs12.load_pkcs12(pki.pkcs12(issued, "pw", ca), b"pw")
    assert store.cert is not None and store.cert.certificate == cert
    assert [c.certificate for c in store.additional_certs] == [ca.cert]
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_secrets_are_written_0600_and_refused_when_others_can_read_them(tmp_path: Path) -> None:
    path = pki.write_secret(tmp_path / "d" / "pw", "s3cret\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert pki.read_secret(path) == "s3cret"
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        pki.read_secret(path)


def test_init_makes_every_secret_once_and_keeps_them_on_a_second_run(tmp_path: Path) -> None:
    first = security.init(tmp_path, sites=SITES)
    paths = security.Paths(tmp_path)
    assert paths.initialised()
    assert set(first.principals) == {"agent-lab-a", "agent-lab-b", *security.ROLES}
    password = paths.password_file("learner").read_text()
    for secret in (paths.keystore, paths.keystore_password, paths.admin_key,
                   paths.signing_key, paths.password_file("agent-lab-a"), tmp_path /
                   "security" / "ca.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert security.init(tmp_path, sites=SITES).created == ()
    assert paths.password_file("learner").read_text() == password
    trusted = signing.TrustedKeys.load(paths.trusted_keys)
    assert [k.key_id for k in trusted.keys] == [signing.SigningKey.load(paths.signing_key).key_id]


def test_the_broker_properties_hold_no_password_of_a_client_and_require_certificates_inside(
        tmp_path: Path) -> None:
    security.init(tmp_path, sites=SITES)
    props = security.broker_properties(tmp_path, host="127.0.0.1", port=1, internal_port=2,
                                       controller_port=3)
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL"
    assert props["ssl.client.auth"] == "required"
    assert props["super.users"] == "User:broker;User:admin"
    text = "\n".join(props.values())
    for principal in ("operator", "learner", "agent-lab-a"):
        assert security.Paths(tmp_path).password_file(principal).read_text() not in text
    merged = security.override_properties("listeners=PLAINTEXT://x:1\nnode.id=1\n", props)
    assert "listeners=CLIENT://127.0.0.1:1," in merged and "PLAINTEXT" not in merged


# -- client settings ----------------------------------------------------------------------------


def test_the_password_comes_from_its_file_and_never_shows_in_dumps(tmp_path: Path) -> None:
    security.init(tmp_path, sites=SITES)
    settings = security.client_settings(tmp_path, "sink", "127.0.0.1:1")
    password = security.Paths(tmp_path).password_file("sink").read_text().strip()
    assert settings.admin_config()["sasl.password"] == password
    assert settings.admin_config()["sasl.mechanism"] == "SCRAM-SHA-512"
    assert password not in repr(settings) and password not in str(settings.redacted())
    assert password not in str(settings.model_dump())
    env = security.client_env(tmp_path, "sink", "127.0.0.1:1")
    assert password not in str(env)
    assert KafkaSettings.model_validate(
        {k.removeprefix("USER_KAFKA_").lower(): v for k, v in env.items()
         if k.startswith("USER_KAFKA_")}).password() == password
    assert settings.ssl_context() is not None
    open_file = tmp_path / "open.password"
    open_file.write_text("x")
    open_file.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        KafkaSettings(sasl_password_file=open_file)


def test_each_topology_role_runs_as_its_own_principal(tmp_path: Path) -> None:
    topo = supervisor.Topology.model_validate({"name": "t", "roles": {
        "c": {"userctl": ["controller"]}, "l": {"userctl": ["learn", "x"]},
        "a": {"userctl": ["agent", "--robot-type", "reacher2d", "--site", "lab-b"]},
        "r": {"userctl": ["rewards", "run", "reach_dense@1"]},
        "s": {"userctl": ["sink"], "env": {"USER_KAFKA_SASL_USERNAME": "mine"}}}})
    secured = security.secure_topology(topo, tmp_path, "h:1")
    users = {n: r.env["USER_KAFKA_SASL_USERNAME"] for n, r in secured.roles.items()}
    assert users == {"c": "controller", "l": "learner", "a": "agent-lab-b", "r": "rewards",
                     "s": "mine"}
    assert "USER_WEIGHTS_SIGNING_KEY" in secured.roles["l"].env
    assert "USER_AGENT_WEIGHTS_TRUSTED_KEYS" in secured.roles["a"].env
    assert "USER_WEIGHTS_SIGNING_KEY" not in secured.roles["a"].env


# -- least privilege ----------------------------------------------------------------------------


def _writers(plan: list[security.Grant], topic: str) -> set[str]:
    return {g.principal for g in plan if g.resource == "topic" and g.name == topic
            and g.operation == "WRITE"}


def test_only_the_learner_writes_weights_only_the_controller_assignments() -> None:
    plan = security.acl_plan(SITES)
    assert _writers(plan, catalog.WEIGHTS.name) == {"learner"}
    assert _writers(plan, catalog.WEIGHTS_MANIFESTS.name) == {"learner"}
    assert _writers(plan, catalog.ASSIGNMENTS.name) == {"controller"}
    assert _writers(plan, catalog.COMMANDS.name) == {"operator"}
    # the controller writes experiment *status* to the operator's topic (one topic, one ACL)
    assert _writers(plan, catalog.EXPERIMENTS.name) == {"operator", "controller"}
    assert _writers(plan, catalog.TRANSITIONS_RAW.name) == {"agent-lab-a", "agent-lab-b"}


def test_an_agent_reads_weights_assignments_commands_and_no_site_data() -> None:
    plan = security.acl_plan(SITES)
    reads = {g.name for g in plan if g.principal == "agent-lab-a" and g.resource == "topic"
             and g.operation == "READ"}
    assert reads == {catalog.WEIGHTS.name, catalog.WEIGHTS_MANIFESTS.name,
                     catalog.ASSIGNMENTS.name, catalog.COMMANDS.name,
                     catalog.INFERENCE_REPLIES.name}
    writes = {g.name for g in plan if g.principal == "agent-lab-a" and g.operation == "WRITE"}
    assert writes == {catalog.ROBOTS.name, catalog.HEARTBEATS.name, catalog.TRANSITIONS_RAW.name,
                      catalog.EPISODES.name, catalog.DLQ.name, catalog.INFERENCE_REQUESTS.name}
    assert not any(g.resource == "cluster" for g in plan)


def test_the_controller_reads_mirrormaker_heartbeats_and_nobody_else_writes_them() -> None:
    # the controller tells a site whose link is down from robots that are gone by them
    plan = security.acl_plan(SITES)
    readers = {g.principal for g in plan if g.resource == "topic" and g.operation == "READ"
               and g.name == mirror_heartbeats.TOPIC}
    assert readers == {"controller"}
    assert _writers(plan, mirror_heartbeats.TOPIC) == set()  # MirrorMaker 2 writes it, no role


# -- signed manifests ---------------------------------------------------------------------------


def test_a_signed_manifest_verifies_and_any_change_breaks_the_signature() -> None:
    key = signing.SigningKey.generate()
    trusted = signing.TrustedKeys().trust(key.public)
    manifest, _, _ = published(snapshot(1))
    signed = signing.sign(manifest, key)
    assert trusted.verify(signed) == key.key_id
    # through the wire format and back
    assert trusted.verify(events.WeightsManifestV1.model_validate_json(
        signed.model_dump_json())) == key.key_id
    for change in ({"version": 99}, {"sha256": "0" * 64}, {"learner_step": 7}):
        with pytest.raises(signing.SignatureRefused) as err:
            trusted.verify(signed.model_copy(update=change))
        assert err.value.reason == "bad_signature"
    with pytest.raises(signing.SignatureRefused, match="unsigned"):
        trusted.verify(manifest)
    rogue = signing.SigningKey.generate()
    with pytest.raises(signing.SignatureRefused, match="untrusted_key"):
        trusted.verify(signing.sign(manifest, rogue))


def test_rotation_trusts_the_new_key_and_expires_the_old_after_the_grace(tmp_path: Path) -> None:
    old, new = signing.SigningKey.generate(), signing.SigningKey.generate()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    trusted = signing.TrustedKeys().trust(old.public, now=t0)
    trusted = trusted.trust(new.public, now=t0 + timedelta(days=1), expire_others_after_s=3600)
    trusted.save(tmp_path / "trusted.json")
    trusted = signing.TrustedKeys.load(tmp_path / "trusted.json")
    manifest, _, _ = published(snapshot(1))
    by_old, by_new = signing.sign(manifest, old), signing.sign(manifest, new)
    during = t0 + timedelta(days=1, minutes=30)
    after = t0 + timedelta(days=1, hours=2)
    assert trusted.verify(by_old, during) and trusted.verify(by_new, during)
    assert trusted.verify(by_new, after) == new.key_id
    with pytest.raises(signing.SignatureRefused, match="expired_key"):
        trusted.verify(by_old, after)


def _signed_subscriber(tmp_path: Path, sink: InMemoryWeightsSink
                       ) -> tuple[WeightsSubscriber, MemorySource, signing.SigningKey]:
    key = signing.SigningKey.generate()
    signing.TrustedKeys().trust(key.public).save(tmp_path / "trusted.json")
    source = MemorySource(sink)
    sub = WeightsSubscriber(lambda: source, SPEC,
                            SubscriberSettings(trusted_keys=tmp_path / "trusted.json"))
    return sub, source, key


def _publish(sink: InMemoryWeightsSink, version: int, key_file: Path | None) -> None:
    pub = WeightsPublisher(sink, EXP, WeightSyncSettings(max_bytes_per_s=0,
                                                         signing_key=key_file))
    pub.start(first_version=version)
    pub.publish(snapshot(version))
    assert pub.wait_published(version, 30.0)
    pub.close()


def test_unsigned_wrongly_signed_and_replayed_versions_are_refused_and_dead_lettered(
        tmp_path: Path) -> None:
    sink = InMemoryWeightsSink()
    sub, source, key = _signed_subscriber(tmp_path, sink)
    key_file = pki.write_secret(tmp_path / "signing.key", key.pem())
    sub.want(EXP)
    sub.start()
    try:
        _publish(sink, 1, None)  # unsigned
        assert sub.wait_rejected(EXP, 1, 30.0)
        signed = signing.sign(published(snapshot(2), version=2)[0], key)
        sink.manifests.append(signed.model_copy(update={"learner_step": 123}))
        assert sub.wait_rejected(EXP, 2, 30.0)  # signed, then changed: wrongly signed
        _publish(sink, 3, key_file)
        assert sub.wait_applied(EXP, 3, 30.0)
        sink.manifests.append(sink.manifests[-1])  # the same signed v3 again: a replay
        _publish(sink, 3, key_file)  # a new v3, validly signed: still not newer
        assert _wait(lambda: sub.rejected["replayed"] == 2)
    finally:
        sub.close()
    assert sub.applied_versions == [(EXP, 3)]
    assert sub.rejected["unsigned"] == 1 and sub.rejected["bad_signature"] == 1
    reasons = [(v, r) for v, r, _ in source.refused]
    assert reasons == [(1, events.RejectReason.SIGNATURE), (2, events.RejectReason.SIGNATURE),
                       (3, events.RejectReason.REPLAYED), (3, events.RejectReason.REPLAYED)]
    assert sub.current(EXP) is not None and sub.current(EXP).version == 3  # type: ignore[union-attr]


def test_a_key_trusted_later_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    sink = InMemoryWeightsSink()
    sub, _, _ = _signed_subscriber(tmp_path, sink)
    other = signing.SigningKey.generate()
    sub.want(EXP)
    sub.start()
    try:
        _publish(sink, 1, pki.write_secret(tmp_path / "other.key", other.pem()))
        assert sub.wait_rejected(EXP, 1, 30.0)
        assert sub.rejected["untrusted_key"] == 1
        trusted = signing.TrustedKeys.load(tmp_path / "trusted.json").trust(other.public)
        trusted.save(tmp_path / "trusted.json")
        _publish(sink, 2, tmp_path / "other.key")
        assert sub.wait_applied(EXP, 2, 30.0)
    finally:
        sub.close()


def _wait(cond: object, timeout_s: float = 30.0) -> bool:
    import time

    assert callable(cond)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False
