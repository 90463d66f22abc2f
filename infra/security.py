"""The secured cluster: who is who, what each may do, and where the secrets live (issue 16).

``userctl security init`` makes, under ``<USER_HOME>/security/`` (0700)::

    ca.pem  ca.key              the cluster's CA (infra.pki); ca.key 0600
    broker.p12  broker.password the broker's keystore (PKCS#12) and its password, 0600
    admin.pem   admin.key       the admin's client certificate (mutual TLS, a super user)
    users/<principal>.password  one SCRAM-SHA-512 password per role, 0600
    weights-signing.key         the learner's Ed25519 key (topics.signing), 0600
    trusted-keys.json           public keys robots accept weights from (distributed to them)
    client.properties           the operator's client config for infra/bin tools, 0600
    admin.properties            the admin's (mutual TLS) config for kafka-acls, 0600

and, once the secure broker answers, creates the SCRAM credentials and the ACLs
(:func:`acl_plan`) through the admin principal.

The broker (``userctl broker start --secure`` / ``USER_SECURE=1``) listens with three
listeners: CLIENT (SASL_SSL, SCRAM-SHA-512) on ``USER_BROKER_PORT`` for every role;
INTERNAL (SSL, client certificate required) on ``USER_BROKER_INTERNAL_PORT`` for
inter-broker traffic and the admin; CONTROLLER (SSL, client certificate required).
The authorizer is KRaft's StandardAuthorizer; ``User:broker`` and ``User:admin`` (the
certificate CNs) are super users; everybody else gets only :func:`acl_plan`.

**What ACLs can and cannot enforce.**  Kafka authorizes per topic, never per partition.
The sites share the raw topics by partition (``topics.settings.SiteMap``), so an agent
principal of ``lab-a`` *can* write to ``lab-b``'s partitions of ``transitions.raw``:
the broker cannot stop it.  What is enforced: an agent writes only raw data (its
transitions, episodes, heartbeats, announcements, dead letters) and reads only weights,
manifests, assignments, commands and inference replies — it reads no site's data at all,
writes no weights, assignments, commands or experiments.  Site isolation of writes comes
from the per-site brokers of the edge–cloud layout (DESIGN §9: a site's credentials exist
only on its own broker) and, on one broker, from consumers checking a batch's site
against its partition (``topics.settings.SiteMap.site_of``).  The controller writes
experiment *status* to ``experiments`` beside the operator's submissions: one topic, so
the ACL cannot tell them apart.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra import pki
from infra.broker import Broker, BrokerError
from infra.supervisor import Topology
from topics import catalog, mirror_heartbeats, signing, tables
from topics.settings import KafkaSettings

MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
#: Certificate CNs that are super users (map to ``User:<CN>``).
BROKER_CN = "broker"
ADMIN_CN = "admin"
#: Roles with their own SCRAM principal besides ``agent-<site>``.
ROLES = ("controller", "sink", "rewards", "learner", "inference", "host", "operator")

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class SecurityError(BrokerError):
    """A security setup problem, described in one actionable line."""


# -- where things live ----------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """The files of ``<home>/security``: the cluster's (``security init``) and the WAN's
    (``infra.wan``), under one CA."""

    home: Path

    @property
    def dir(self) -> Path:
        return self.home / "security"

    @property
    def ca(self) -> Path:
        return self.dir / pki.CA_CERT

    @property
    def keystore(self) -> Path:
        return self.dir / "broker.p12"

    @property
    def keystore_password(self) -> Path:
        return self.dir / "broker.password"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.pem"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def signing_key(self) -> Path:
        return self.dir / "weights-signing.key"

    @property
    def trusted_keys(self) -> Path:
        return self.dir / "trusted-keys.json"

    @property
    def client_properties(self) -> Path:
        return self.dir / "client.properties"

    @property
    def admin_properties(self) -> Path:
        return self.dir / "admin.properties"

    @property
    def wan_keystore(self) -> Path:
        """The cloud broker's WAN listeners' keystore (``infra.wan``)."""
        return self.dir / "wan-broker.p12"

    @property
    def wan_keystore_password(self) -> Path:
        return self.dir / "wan-broker.password"

    def site_cert(self, site: str) -> Path:
        """An edge's MirrorMaker 2 client certificate (``infra.wan``)."""
        return self.dir / "sites" / f"{site}.pem"

    def site_key(self, site: str) -> Path:
        return self.dir / "sites" / f"{site}.key"

    def password_file(self, principal: str) -> Path:
        return self.dir / "users" / f"{principal}.password"

    def initialised(self) -> bool:
        return self.ca.exists() and self.keystore.exists() and self.admin_cert.exists()


def principals(sites: Iterable[str]) -> list[str]:
    """Every SCRAM principal: one agent principal per site, then the other roles."""
    return [f"agent-{site}" for site in sites] + list(ROLES)


def principal_of(userctl_args: Sequence[str]) -> str:
    """The principal a ``userctl`` role runs as (``agent --site lab-a`` → ``agent-lab-a``)."""
    if not userctl_args:
        return "operator"
    cmd = userctl_args[0]
    if cmd == "agent":
        args = list(userctl_args)
        site = args[args.index("--site") + 1] if "--site" in args[:-1] else "lab-a"
        return f"agent-{site}"
    return {"controller": "controller", "sink": "sink", "rewards": "rewards",
            "learn": "learner", "inference": "inference", "host": "host"}.get(cmd, "operator")


# -- init -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitResult:
    created: tuple[str, ...]
    """files made this time (empty: everything existed)."""
    principals: tuple[str, ...]


def init(home: Path, *, host: str = "127.0.0.1", sites: Iterable[str] = (),
         extra_names: Sequence[str] = ()) -> InitResult:
    """Make whatever of the CA, certificates, keystore, passwords and signing key is
    missing (idempotent: existing secrets are kept, so running brokers and clients go on)."""
    paths = Paths(home)
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(paths.dir, 0o700)
    created: list[str] = []
    if paths.ca.exists():
        ca = pki.CertificateAuthority.load(paths.dir)
    else:
        ca = pki.CertificateAuthority.create("USER cluster CA")
        ca.save(paths.dir)
        created.append(str(paths.ca))
    if not paths.keystore.exists():
        names = dict.fromkeys([host, "127.0.0.1", "localhost", socket.gethostname(),
                               *extra_names])
        broker = ca.issue(BROKER_CN, sans=tuple(names), server=True, client=True)
        password = pki.new_password()
        pki.write_secret(paths.keystore_password, password)
        pki.write_secret(paths.keystore, pki.pkcs12(broker, password, ca))
        created.append(str(paths.keystore))
    if not paths.admin_cert.exists():
        admin = ca.issue(ADMIN_CN, client=True)
        pki.write_secret(paths.admin_key, admin.key_pem)
        paths.admin_cert.write_bytes(admin.cert_pem)
        created.append(str(paths.admin_cert))
    everyone = principals(sites)
    for principal in everyone:
        path = paths.password_file(principal)
        if not path.exists():
            pki.write_secret(path, pki.new_password())
            created.append(str(path))
    if not paths.signing_key.exists():
        key = signing.SigningKey.generate()
        pki.write_secret(paths.signing_key, key.pem())
        signing.TrustedKeys.load(paths.trusted_keys).trust(
            key.public, comment="made by userctl security init").save(paths.trusted_keys)
        created.append(str(paths.signing_key))
    return InitResult(tuple(created), tuple(everyone))


# -- the broker side -------------------------------------------------------------------------


def broker_properties(home: Path, *, host: str, port: int, internal_port: int,
                      controller_port: int) -> dict[str, str]:
    """server.properties entries of the secure broker (they override the template's)."""
    paths = Paths(home)
    if not paths.initialised():
        raise SecurityError(f"no certificates in {paths.dir}; run `userctl security init`")
    password = pki.read_secret(paths.keystore_password)
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return {
        "listeners": f"CLIENT://{host}:{port},INTERNAL://{host}:{internal_port},"
                     f"CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"CLIENT://{host}:{port},INTERNAL://{host}:{internal_port}",
        "listener.security.protocol.map": "CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL",
        "inter.broker.listener.name": "INTERNAL",
        "controller.listener.names": "CONTROLLER",
        "sasl.enabled.mechanisms": MECHANISM,
        "listener.name.client.sasl.enabled.mechanisms": MECHANISM,
        f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        # SSL listeners (INTERNAL, CONTROLLER) require a client certificate; the SASL_SSL
        # listener authenticates by password (Kafka applies ssl.client.auth to it only
        # when listener-prefixed).
        "ssl.client.auth": "required",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(paths.keystore),
        "ssl.keystore.password": password,
        "ssl.key.password": password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(paths.ca),
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{BROKER_CN};User:{ADMIN_CN}",
        "allow.everyone.if.no.acl.found": "false",
    }


def override_properties(text: str, props: dict[str, str]) -> str:
    """``text`` (a .properties file) with ``props`` replacing or adding their keys."""
    out, seen = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith(
            "#") else None
        if key in props:
            out.append(f"{key}={props[key]}")
            seen.add(key)
        else:
            out.append(line)
    out += ["", "# Security (issue 16): written by infra/security.py"]
    out += [f"{k}={v}" for k, v in props.items() if k not in seen]
    return "\n".join(out) + "\n"


# -- client settings -------------------------------------------------------------------------


def admin_settings(home: Path, bootstrap: str) -> KafkaSettings:
    """The admin principal (mutual TLS, a super user) on the INTERNAL listener."""
    paths = Paths(home)
    return KafkaSettings(
        bootstrap=bootstrap, security_protocol="SSL", ssl_ca_location=paths.ca,
        ssl_certificate_location=paths.admin_cert, ssl_key_location=paths.admin_key)


def client_env(home: Path, principal: str, bootstrap: str) -> dict[str, str]:
    """The environment a role's process needs on the secured cluster (no secret in it:
    the password stays in its file)."""
    paths = Paths(home)
    env = {
        "USER_KAFKA_BOOTSTRAP": bootstrap,
        "USER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "USER_KAFKA_SASL_MECHANISM": MECHANISM,
        "USER_KAFKA_SASL_USERNAME": principal,
        "USER_KAFKA_SASL_PASSWORD_FILE": str(paths.password_file(principal)),
        "USER_KAFKA_SSL_CA_LOCATION": str(paths.ca),
    }
    if principal == "learner":
        env["USER_WEIGHTS_SIGNING_KEY"] = str(paths.signing_key)
    if principal.startswith("agent-") or principal == "inference":
        env["USER_AGENT_WEIGHTS_TRUSTED_KEYS"] = str(paths.trusted_keys)
    return env


def client_settings(home: Path, principal: str, bootstrap: str, **extra: object
                    ) -> KafkaSettings:
    """:class:`KafkaSettings` of ``principal`` (as :func:`client_env` would give)."""
    paths = Paths(home)
    return KafkaSettings(
        bootstrap=bootstrap, security_protocol="SASL_SSL", sasl_mechanism=MECHANISM,
        sasl_username=principal, sasl_password_file=paths.password_file(principal),
        ssl_ca_location=paths.ca, **extra)  # type: ignore[arg-type]


def write_tool_configs(home: Path) -> None:
    """client.properties (operator, SASL_SSL) and admin.properties (mutual TLS) for the
    Java tools in infra/bin, 0600 (they hold a password)."""
    paths = Paths(home)
    password = pki.read_secret(paths.password_file("operator"))
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    pki.write_secret(paths.client_properties, "\n".join([
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={MECHANISM}",
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="operator" password="{escaped}";',
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={paths.ca}",
        "",
    ]))
    # The JVM takes a PEM keystore as key + certificate in one file.
    key_and_cert = paths.dir / "admin-keystore.pem"
    pki.write_secret(key_and_cert, paths.admin_key.read_bytes() + paths.admin_cert.read_bytes())
    pki.write_secret(paths.admin_properties, "\n".join([
        "security.protocol=SSL",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={key_and_cert}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={paths.ca}",
        "",
    ]))


# -- ACLs ------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Grant:
    """One ACL: ``principal`` may ``operation`` on a resource."""

    principal: str
    resource: str  # "topic" | "group" | "cluster"
    name: str
    operation: str  # READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS, CREATE, ALTER_CONFIGS
    prefixed: bool = False


def _topics(*specs: catalog.TopicSpec) -> list[str]:
    return [s.name for s in specs]


def acl_plan(sites: Iterable[str], *, client_id: str = "user",
             sink_group: str = tables.DEFAULT_SINK_NAME) -> list[Grant]:
    """Every ACL of least privilege (module doc for what topic ACLs cannot enforce)."""
    c = catalog
    reads: dict[str, list[str]] = {
        # ... and MirrorMaker 2's heartbeats: a site whose link is down is held, not lost
        "controller": [*_topics(c.ROBOTS, c.EXPERIMENTS, c.ASSIGNMENTS, c.HEARTBEATS, c.HOSTS,
                                c.PLACEMENTS, c.HOST_HEARTBEATS, c.COMMANDS),
                       mirror_heartbeats.TOPIC],
        # sink and reward jobs check batches against the robots' announced specs
        "sink": _topics(c.TRANSITIONS_RAW, c.TRANSITIONS, c.EPISODES, c.WEIGHTS_MANIFESTS,
                        c.ROBOTS),
        "rewards": _topics(c.TRANSITIONS_RAW, c.ROBOTS),
        "learner": _topics(c.TRANSITIONS, c.ROBOTS, c.EXPERIMENTS, c.WEIGHTS_MANIFESTS,
                           c.PLACEMENTS),
        "inference": _topics(c.INFERENCE_REQUESTS, c.WEIGHTS, c.WEIGHTS_MANIFESTS,
                             c.PLACEMENTS, c.EXPERIMENTS, c.ROBOTS),
        "host": _topics(c.PLACEMENTS),
        "operator": [s.name for s in c.CATALOG],
    }
    writes: dict[str, list[str]] = {
        "controller": _topics(c.ROBOTS, c.ASSIGNMENTS, c.EXPERIMENTS, c.PLACEMENTS, c.DLQ),
        "sink": _topics(c.DLQ, c.GAPS),
        "rewards": _topics(c.TRANSITIONS, c.DLQ),
        "learner": _topics(c.WEIGHTS, c.WEIGHTS_MANIFESTS, c.LEARNER_METRICS, c.DLQ),
        "inference": _topics(c.INFERENCE_REPLIES, c.DLQ),
        "host": _topics(c.HOSTS, c.HOST_HEARTBEATS, c.DLQ),
        "operator": _topics(c.COMMANDS, c.EXPERIMENTS, c.LABELS),
    }
    groups: dict[str, list[str]] = {
        "sink": [sink_group], "rewards": ["rewards-"],
    }
    for site in sites:
        agent = f"agent-{site}"
        reads[agent] = _topics(c.ASSIGNMENTS, c.COMMANDS, c.WEIGHTS, c.WEIGHTS_MANIFESTS,
                               c.INFERENCE_REPLIES)
        writes[agent] = _topics(c.ROBOTS, c.HEARTBEATS, c.TRANSITIONS_RAW, c.EPISODES,
                                c.DLQ, c.INFERENCE_REQUESTS)
    grants: set[Grant] = set()
    for principal in set(reads) | set(writes):
        for topic in reads.get(principal, []):
            grants.add(Grant(principal, "topic", topic, "READ"))
        for topic in writes.get(principal, []):
            grants.add(Grant(principal, "topic", topic, "WRITE"))
        for topic in {*reads.get(principal, []), *writes.get(principal, [])}:
            # the producer/outbox learns each topic's record size limit from its config
            grants.add(Grant(principal, "topic", topic, "DESCRIBE_CONFIGS"))
        # readers that assign partitions name an ephemeral group "<client id>-<role>-…"
        grants.add(Grant(principal, "group", f"{client_id}-", "READ", prefixed=True))
        for group in groups.get(principal, []):
            grants.add(Grant(principal, "group", group, "READ", prefixed=True))
    for spec in c.CATALOG:  # the operator makes and fixes the catalog's topics
        for op in ("CREATE", "ALTER_CONFIGS"):
            grants.add(Grant("operator", "topic", spec.name, op))
    return sorted(grants)


# -- applying credentials and ACLs -----------------------------------------------------------


@dataclass(frozen=True)
class ApplyResult:
    users: int
    acls: int


def apply(home: Path, admin: KafkaSettings, sites: Iterable[str], *, timeout_s: float = 30.0
          ) -> ApplyResult:
    """Create/refresh every SCRAM credential and ACL on the broker (idempotent), as the
    admin principal.  Raises :class:`SecurityError` naming what the broker refused."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    from topics.admin import admin_client

    sites = list(sites)
    paths = Paths(home)
    client = admin_client(admin)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            principal, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            pki.read_secret(paths.password_file(principal)).encode())
        for principal in principals(sites)
    ]
    try:
        for future in client.alter_user_scram_credentials(upserts).values():
            future.result(timeout=timeout_s)
        kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
                 "cluster": ResourceType.BROKER}
        bindings = [
            AclBinding(kinds[g.resource], g.name,
                       ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
                       f"User:{g.principal}", "*", getattr(AclOperation, g.operation),
                       AclPermissionType.ALLOW)
            for g in acl_plan(sites)
        ]
        for future in client.create_acls(bindings, request_timeout=timeout_s).values():
            future.result(timeout=timeout_s)
    except KafkaException as exc:
        raise SecurityError(f"the broker refused the security setup: {exc.args[0].str()}; "
                            f"is it the secure broker of {home}?") from None
    write_tool_configs(home)
    return ApplyResult(len(upserts), len(bindings))


def start_secure(broker: Broker, sites: Iterable[str], say: Say = _quiet) -> KafkaSettings:
    """Init what is missing, start ``broker`` (``secure=True``), apply credentials and
    ACLs; the admin's settings."""
    if not broker.settings.secure:
        raise SecurityError("start_secure needs a broker with USER_SECURE=1 / --secure")
    sites = list(sites)
    if broker.pid() is not None and "SASL_SSL" not in broker.server_properties.read_text():
        raise SecurityError(f"the broker of {broker.home} is running without security; stop "
                            "it (`userctl broker stop`), then `userctl broker start --secure`")
    result = init(broker.home, host=broker.settings.host, sites=sites)
    for path in result.created:
        say(f"made {path}")
    broker.start(say=say)
    admin = broker.admin_settings()
    applied = apply(broker.home, admin, sites)
    say(f"{applied.users} SCRAM users and {applied.acls} ACLs in place")
    return admin


def secure_topology(topology: Topology, home: Path, bootstrap: str) -> Topology:
    """``topology`` with each ``userctl`` role running as its own principal
    (:func:`principal_of`, :func:`client_env`); a role's own ``env`` still wins."""
    roles = {}
    for name, spec in topology.roles.items():
        principal = principal_of(spec.userctl or [])
        env = {**client_env(home, principal, bootstrap), **spec.env}
        roles[name] = spec.model_copy(update={"env": env})
    return topology.model_copy(update={"roles": roles})


# -- `userctl up` / `userctl demo` with USER_SECURE=1 -----------------------------------------


def requested() -> bool:
    """True when the user asked for the secured cluster (``USER_SECURE=1``)."""
    from infra.broker import BrokerSettings

    return BrokerSettings().secure


def ensure_cluster(say: Say = _quiet) -> None:
    """Start the local secure broker (unless ``USER_KAFKA_BOOTSTRAP`` names a cluster) with
    users, ACLs and the catalog's topics, then make this process (and the processes it
    starts) the operator, unless the environment already names a principal."""
    from infra.broker import BrokerSettings
    from topics import admin

    if os.environ.get("USER_KAFKA_BOOTSTRAP") and os.environ.get("USER_KAFKA_SASL_USERNAME"):
        admin.ensure_topics(KafkaSettings())
        return
    broker = Broker(BrokerSettings())
    start_secure(broker, KafkaSettings().sites.sites, say)
    admin.ensure_topics(broker.admin_settings())
    os.environ.update(client_env(broker.home, "operator", broker.settings.bootstrap))


def for_topology(topology: Topology) -> Topology:
    """``topology`` as its principals when ``USER_SECURE=1`` (else unchanged)."""
    from infra.broker import BrokerSettings

    if not requested():
        return topology
    settings = BrokerSettings()
    bootstrap = os.environ.get("USER_KAFKA_BOOTSTRAP") or settings.bootstrap
    return secure_topology(topology, settings.home, bootstrap)
