"""Kafka settings: the one place where librdkafka's and aiokafka's option names appear.

Every component that talks to Kafka builds its client configuration from
:class:`KafkaSettings`, which reads ``USER_KAFKA_*`` environment variables.  Code
elsewhere never spells a librdkafka key such as ``"bootstrap.servers"``; it asks this
module for a producer, consumer or admin configuration instead.
"""

from __future__ import annotations

import json
import logging
import ssl
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: librdkafka configuration values are strings, numbers or bools (and the Python logger
#: its own log lines go to).
ClientConfig = dict[str, str | int | float | bool | logging.Logger]
#: An admin client's configuration (``AdminClient`` takes its logger as a keyword).
AdminConfig = dict[str, str | int | float | bool]

#: Where librdkafka's log lines go, at their syslog level mapped to Python's (instead of
#: raw ``%4|…|FAC|…`` lines on stderr); served when the client is polled.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def _not_an_explained_refusal(record: logging.LogRecord) -> bool:
    """Drop an admin client's authentication/TLS failure lines: ``topics.admin`` turns
    them into one error naming the principal (producers and consumers still log them)."""
    text = record.getMessage()
    return not ("-admin#" in text and ("authentication error" in text
                                       or "SSL handshake failed" in text))


LIBRDKAFKA_LOG.addFilter(_not_an_explained_refusal)

#: The topic config holding a topic's record size limit (the broker reports it per topic).
TOPIC_MAX_MESSAGE_BYTES = "max.message.bytes"

#: Sites used when ``USER_KAFKA_SITES`` is not set: two labs with two partitions each.
DEFAULT_SITES: dict[str, tuple[int, ...]] = {"lab-a": (0, 1), "lab-b": (2, 3)}


class SiteMap(BaseModel):
    """The explicit site → partitions map of every site-partitioned topic.

    Each site owns a disjoint set of partitions, so a site's traffic stays on its own
    partitions, a site-local consumer can ``assign`` exactly those, and order per robot
    is kept (a robot always maps to the same partition of its site).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sites: dict[str, tuple[int, ...]] = Field(default_factory=lambda: dict(DEFAULT_SITES))

    @model_validator(mode="after")
    def _disjoint_and_dense(self) -> SiteMap:
        if not self.sites:
            raise ValueError("the site map is empty: name at least one site")
        seen: dict[int, str] = {}
        for site, partitions in self.sites.items():
            if not site or "/" in site:
                raise ValueError(f"site name {site!r} must be non-empty and contain no '/'")
            if not partitions:
                raise ValueError(f"site {site!r} has no partitions")
            for p in partitions:
                if p < 0:
                    raise ValueError(f"site {site!r}: partition {p} is negative")
                if p in seen:
                    raise ValueError(
                        f"partition {p} is given to both {seen[p]!r} and {site!r}; "
                        "each partition belongs to one site"
                    )
                seen[p] = site
        missing = sorted(set(range(len(seen))) - set(seen))
        if missing:
            raise ValueError(
                f"partitions {missing} belong to no site; number partitions 0..N-1 without gaps"
            )
        return self

    @property
    def partition_count(self) -> int:
        """Partitions a site-partitioned topic needs to hold every site."""
        return sum(len(p) for p in self.sites.values())

    def partitions_of(self, site: str) -> tuple[int, ...]:
        """The partitions owned by ``site``; raises :class:`UnknownSiteError`."""
        try:
            return self.sites[site]
        except KeyError:
            raise UnknownSiteError(site, tuple(self.sites)) from None

    def partition_for(self, site: str, robot_id: str) -> int:
        """The partition that carries ``robot_id``'s records at ``site``.

        Stable across processes and Python versions (CRC-32 of the robot id, not
        ``hash()``), so a robot's records stay in order on one partition.
        """
        owned = self.partitions_of(site)
        return owned[zlib.crc32(robot_id.encode()) % len(owned)]

    def site_of(self, partition: int) -> str:
        """The site that owns ``partition``; raises ``KeyError`` if none does."""
        for site, owned in self.sites.items():
            if partition in owned:
                return site
        raise KeyError(partition)


class UnknownSiteError(ValueError):
    """A site name that the site map does not list."""

    def __init__(self, site: str, known: tuple[str, ...]) -> None:
        super().__init__(
            f"site {site!r} is not in the site map (known: {', '.join(known)}); "
            "add it to USER_KAFKA_SITES, e.g. "
            "USER_KAFKA_SITES='lab-a=0,1;lab-b=2,3;" + site + "=4,5', then run "
            "`userctl topics create --alter` to add its partitions"
        )
        self.site = site


def parse_sites(text: str) -> dict[str, tuple[int, ...]]:
    """Parse ``'lab-a=0,1;lab-b=2,3'`` (or the same as a JSON object) into a site map."""
    text = text.strip()
    if text.startswith("{"):
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("USER_KAFKA_SITES JSON must be an object of site -> [partitions]")
        return {str(k): tuple(int(p) for p in v) for k, v in raw.items()}
    sites: dict[str, tuple[int, ...]] = {}
    for part in filter(None, (s.strip() for s in text.split(";"))):
        site, sep, plist = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not of the form site=p1,p2")
        sites[site.strip()] = tuple(int(p) for p in plist.split(",") if p.strip())
    return sites


class KafkaSettings(BaseSettings):
    """How every USER process reaches Kafka (environment prefix ``USER_KAFKA_``).

    ``USER_KAFKA_BOOTSTRAP`` points at the cluster; unset, it is the broker that
    ``userctl broker start`` runs on this machine.
    """

    model_config = SettingsConfigDict(env_prefix="USER_KAFKA_", frozen=True, extra="ignore")

    bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port] of the brokers")
    client_id: str = Field("user", description="client.id prefix shown in broker logs")
    sites: Annotated[SiteMap, NoDecode] = Field(
        default_factory=SiteMap, description="site → partitions, 'lab-a=0,1;lab-b=2,3'"
    )
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_SSL, …")
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-512, … for SASL")
    sasl_username: str | None = Field(None, description="the principal (a role, `userctl "
                                      "security init` lists them)")
    sasl_password: SecretStr | None = Field(
        None, description="prefer sasl_password_file: an environment is easy to leak")
    sasl_password_file: Path | None = Field(
        None, description="0600 file holding the password (read once, here)")
    ssl_ca_location: Path | None = Field(None, description="CA certificate (PEM) to trust")
    ssl_certificate_location: Path | None = Field(
        None, description="client certificate (PEM) for mutual TLS (the admin principal)")
    ssl_key_location: Path | None = Field(None, description="its private key (PEM, 0600)")
    message_max_bytes: int = Field(
        40 * 1024 * 1024, description="largest record a client sends or fetches", gt=0
    )
    request_timeout_ms: int = Field(30_000, description="per-request timeout", gt=0)
    replication_factor: int = Field(1, description="replicas of each topic created", ge=1)
    session_timeout_ms: int = Field(
        10_000, ge=1_000,
        description="a consumer-group member silent this long loses its partitions "
        "(a killed sink's partitions move on after this)",
    )

    @model_validator(mode="after")
    def _password_from_file(self) -> KafkaSettings:
        if self.sasl_password is None and self.sasl_password_file is not None:
            path = self.sasl_password_file
            try:
                mode = path.stat().st_mode & 0o077
                text = path.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read the password file {path} ({exc.strerror}); "
                                 "run `userctl security init`") from None
            if mode:
                raise ValueError(f"password file {path} is readable by others; chmod 600 it")
            object.__setattr__(self, "sasl_password", SecretStr(text))
        return self

    def password(self) -> str | None:
        """The SASL password (only client configurations are given it)."""
        return None if self.sasl_password is None else self.sasl_password.get_secret_value()

    @property
    def principal(self) -> str:
        """Who this client is to the broker, for error messages."""
        if self.sasl_username:
            return f"User:{self.sasl_username}"
        if self.ssl_certificate_location is not None:
            return f"the certificate {self.ssl_certificate_location.name}"
        return "ANONYMOUS"

    @field_validator("sites", mode="before")
    @classmethod
    def _parse_sites(cls, value: object) -> object:
        if isinstance(value, str):
            return SiteMap(sites=parse_sites(value))
        if isinstance(value, Mapping) and "sites" not in value:
            return SiteMap(sites={str(k): tuple(v) for k, v in value.items()})
        return value

    # -- librdkafka (confluent-kafka) ---------------------------------------------------

    def _common(self) -> AdminConfig:
        conf: AdminConfig = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "socket.timeout.ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location is not None:
            conf["ssl.ca.location"] = str(self.ssl_ca_location)
        if self.ssl_certificate_location is not None:
            conf["ssl.certificate.location"] = str(self.ssl_certificate_location)
        if self.ssl_key_location is not None:
            conf["ssl.key.location"] = str(self.ssl_key_location)
        return conf

    def admin_config(self) -> AdminConfig:
        """Configuration for ``confluent_kafka.admin.AdminClient`` (pass
        ``logger=LIBRDKAFKA_LOG`` beside it: ``topics.admin.admin_client`` does)."""
        return {**self._common(), "client.id": f"{self.client_id}-admin"}

    def producer_config(
        self,
        *,
        role: str = "producer",
        transactional_id: str | None = None,
        linger_ms: int = 5,
        compression: str = "none",
        message_timeout_ms: int = 0,
    ) -> ClientConfig:
        """An idempotent producer; transactional when ``transactional_id`` is given.

        ``message_timeout_ms=0`` means librdkafka retries a record forever: a broker
        outage delays delivery but never drops it.
        """
        conf: ClientConfig = {
            **self._common(),
            "logger": LIBRDKAFKA_LOG,
            "client.id": f"{self.client_id}-{role}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "compression.type": compression,
            "message.max.bytes": self.message_max_bytes,
            "message.timeout.ms": message_timeout_ms,
            # The partition is always chosen by the caller from the site map; this
            # partitioner only applies to topics that are not site-partitioned.
            "partitioner": "murmur2_random",
        }
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
        return conf

    def consumer_config(
        self,
        group_id: str,
        *,
        role: str = "consumer",
        from_beginning: bool = True,
        read_committed: bool = True,
        enable_auto_commit: bool = False,
    ) -> ClientConfig:
        """A consumer that commits only when told to and reads committed data only."""
        return {
            **self._common(),
            "logger": LIBRDKAFKA_LOG,
            "client.id": f"{self.client_id}-{role}",
            "group.id": group_id,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": enable_auto_commit,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.message.max.bytes": self.message_max_bytes,
            "receive.message.max.bytes": self.message_max_bytes + 64 * 1024 * 1024,
            "enable.partition.eof": False,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self._heartbeat_ms(),
        }

    def _heartbeat_ms(self) -> int:
        """A group member's heartbeat period: a quarter of the session timeout."""
        return max(500, self.session_timeout_ms // 4)

    # -- aiokafka (faust) ----------------------------------------------------------------

    def aiokafka_kwargs(self) -> dict[str, str | int]:
        """Keyword arguments shared by aiokafka producers/consumers (and faust's broker URL)."""
        kwargs: dict[str, str | int] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            kwargs["sasl_plain_username"] = self.sasl_username
        if self.sasl_password is not None:
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context aiokafka/faust use (None on a PLAINTEXT/SASL_PLAINTEXT cluster):
        trusts ``ssl_ca_location`` and checks the broker's name."""
        if "SSL" not in self.security_protocol.upper():
            return None
        ctx = ssl.create_default_context(
            cafile=str(self.ssl_ca_location) if self.ssl_ca_location else None)
        if self.ssl_certificate_location is not None:
            ctx.load_cert_chain(str(self.ssl_certificate_location),
                                str(self.ssl_key_location) if self.ssl_key_location else None)
        return ctx

    def faust_credentials(self) -> object | None:
        """faust's ``broker_credentials``: SASL (SCRAM/PLAIN) over TLS, TLS alone, or None."""
        import faust  # only reward jobs need faust; keep it out of every other import

        ctx = self.ssl_context()
        if self.sasl_mechanism and self.sasl_username is not None:
            return faust.SASLCredentials(
                username=self.sasl_username, password=self.password() or "",
                mechanism=self.sasl_mechanism, ssl_context=ctx)
        if ctx is not None:
            return faust.SSLCredentials(ctx)
        return None

    def faust_settings(self) -> dict[str, float]:
        """faust's consumer-group timings, from the same session timeout as every group.

        faust's own defaults (60 s session) would leave a killed job's partitions
        unconsumed for a minute; with these, its group moves them on within
        ``session_timeout_ms`` plus one heartbeat.
        """
        session_s = self.session_timeout_ms / 1000
        return {
            "broker_session_timeout": session_s,
            "broker_heartbeat_interval": self._heartbeat_ms() / 1000,
            "broker_rebalance_timeout": session_s,
            # faust refuses a session timeout above the request timeout.
            "broker_request_timeout": max(self.request_timeout_ms / 1000, session_s),
        }

    def faust_broker_url(self) -> str:
        """The ``kafka://host:port;host:port`` URL faust expects."""
        return "kafka://" + ";".join(h.strip() for h in self.bootstrap.split(","))

    def redacted(self) -> dict[str, object]:
        """The resolved settings with secrets hidden, for logging at start."""
        shown = self.model_dump()
        if shown.get("sasl_password"):
            shown["sasl_password"] = "***"
        for key in ("sasl_password_file", "ssl_ca_location", "ssl_certificate_location",
                    "ssl_key_location"):
            if shown.get(key) is not None:
                shown[key] = str(shown[key])
        shown["sites"] = {k: list(v) for k, v in self.sites.sites.items()}
        return shown
