"""firstmile's configuration: one TOML file plus ``FIRSTMILE_*`` environment overrides.

Nested fields are overridden with a double underscore, e.g.
``FIRSTMILE_KAFKA__BOOTSTRAP_SERVERS='["broker:9092"]'`` or ``FIRSTMILE_REDIS__URL=...``.
A bad value is reported as one ``ConfigError`` naming the field.

>>> cfg = load_config(None)
>>> cfg.topics.events, cfg.limits.max_event_bytes
('firstmile.events', 32768)
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from firstmile.online_models.learner import LearnerSettings
from firstmile.operators.decode import DecodeLimits
from firstmile.operators.errors import ConfigError
from firstmile.operators.identity import IdentitySettings
from firstmile.operators.privacy import DEFAULT_PII_FIELDS, PrivacyPolicy
from firstmile.operators.profile import DEFAULT_SETTINGS, ProfileSettings
from firstmile.operators.resources import CONFIG_DIR
from firstmile.operators.timers import TimerSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: list[str] = Field(default=["127.0.0.1:19092"], min_length=1)
    client_id: str = "firstmile"
    group_id: str = "firstmile"  # names the job's consumer; offsets live in recovery snapshots
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    start_from: Literal["earliest", "latest"] = "earliest"  # where a fresh job starts reading
    batch_size: int = Field(default=500, ge=1, le=100_000)
    connect_timeout_s: float = Field(default=10, gt=0)  # no broker answers: a clear error

    def client_options(self) -> dict[str, Any]:
        """kafka-python keyword arguments shared by the consumer and the producer."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
            "reconnect_backoff_max_ms": 2000,  # retry a broker that restarts every 2 s at most
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_plain_username
            if self.sasl_plain_password is not None:
                options["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    options[name] = str(value)
        return options


class TopicSettings(_Section):
    events: str = Field(default="firstmile.events", min_length=1, max_length=249)
    segments: str = Field(default="firstmile.segments", min_length=1, max_length=249)
    triggers: str = Field(default="firstmile.triggers", min_length=1, max_length=249)
    deadletter: str = Field(default="firstmile.deadletter", min_length=1, max_length=249)


class RedisSettings(_Section):
    url: str = Field(default="redis://127.0.0.1:16379/0", pattern=r"^(redis|rediss|unix)://")
    key_prefix: str = "firstmile"
    profile_ttl_s: int | None = Field(default=None, ge=1)
    max_backlog: int = Field(default=10_000, ge=1)  # users waiting for write-behind
    update_every_ms: int = Field(default=1000, ge=0)  # a user's profile, at most this often
    max_outage_s: float = Field(default=300, ge=0)  # retried this long, then the job stops


class LimitSettings(_Section):
    max_event_bytes: int = Field(default=32 * 1024, ge=256, le=16 * 1024 * 1024)
    max_depth: int = Field(default=32, ge=2, le=512)
    max_future_skew_s: int = Field(default=86_400, ge=0)

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            self.max_event_bytes, self.max_depth, timedelta(seconds=self.max_future_skew_s)
        )


class DedupSettings(_Section):
    capacity: int = Field(default=64, ge=1, le=10_000)  # ids per user, 12 bytes each
    window_s: int = Field(default=86_400, ge=1)


class RecoverySettings(_Section):
    dir: Path | None = None  # off when unset
    partitions: int = Field(default=1, ge=1)
    snapshot_interval_s: float = Field(default=5.0, gt=0)
    backup_interval_s: float = Field(default=0.0, ge=0)


class ProfileSection(_Section):
    session_gap_s: int = Field(default=1800, ge=1, le=86_400)
    onboarding_steps: list[str] = Field(
        default=list(DEFAULT_SETTINGS.onboarding_steps), max_length=32
    )
    traits: list[str] = Field(default=list(DEFAULT_SETTINGS.traits), max_length=32)
    max_features: int = Field(default=32, ge=1, le=256)

    def settings(self) -> ProfileSettings:
        return ProfileSettings(
            session_gap=timedelta(seconds=self.session_gap_s),
            onboarding_steps=tuple(self.onboarding_steps),
            traits=tuple(self.traits),
            max_features=self.max_features,
        )


class IdentitySection(_Section):
    max_buffer: int = Field(default=50, ge=0, le=1000)  # pre-identify events per visitor
    buffer_ttl_s: int = Field(default=7 * 86_400, ge=60)

    def settings(self) -> IdentitySettings:
        return IdentitySettings(self.max_buffer, timedelta(seconds=self.buffer_ttl_s))


class TimerSection(_Section):
    shards: int = Field(default=64, ge=1, le=65_536)
    inactivity_hours: list[int] = Field(default=[24, 72, 168], max_length=16)
    idle_after_days: float = Field(default=30, gt=0)
    allowed_lateness_s: int = Field(default=300, ge=0)
    wall_clock: bool | None = None  # None: on in Kafka mode, off for files and the simulator

    def settings(
        self,
        *,
        live: bool,
        session_gap_s: int,
        churn_horizon_h: int,
        decision_every_h: float,
        decision_early_h: tuple[float, ...] = (),
    ) -> TimerSettings:
        return TimerSettings(
            session_gap=timedelta(seconds=session_gap_s),
            # the churn horizon is an inactivity signal too: it matures churn labels
            inactivity_hours=tuple(sorted({*self.inactivity_hours, churn_horizon_h})),
            decision_every=timedelta(hours=decision_every_h),
            decision_early=tuple(timedelta(hours=h) for h in decision_early_h),
            idle_after=timedelta(days=self.idle_after_days),
            allowed_lateness=timedelta(seconds=self.allowed_lateness_s),
            wall_clock=live if self.wall_clock is None else self.wall_clock,
            shards=self.shards,
        )


class PrivacySection(_Section):
    pii_fields: list[str] = Field(default=list(DEFAULT_PII_FIELDS))
    action: Literal["hash", "drop"] = "hash"
    hmac_key: SecretStr | None = None  # without a key, PII fields are dropped
    hmac_key_id: str = Field(default="k1", pattern=r"^[A-Za-z0-9_-]{1,16}$")
    required_consent: str | None = "personalization"
    consent_default: bool = True  # for events that carry no consent preferences
    geo_db: Path | None = None  # MaxMind DB (GeoLite2/GeoIP2 City or Country)

    def policy(self) -> PrivacyPolicy:
        key = self.hmac_key.get_secret_value().encode("utf-8") if self.hmac_key else None
        return PrivacyPolicy(
            pii_fields=tuple(self.pii_fields),
            action=self.action,
            key=key,
            key_id=self.hmac_key_id,
            required_consent=self.required_consent or None,
            consent_default=self.consent_default,
            geo_db=self.geo_db,
        )


#: The learner's defaults, kept in one place (``LearnerSettings``).
_LEARNER: dict[str, Any] = {f.name: f.default for f in fields(LearnerSettings)}


class ModelSection(_Section):
    segments: int = Field(default=_LEARNER["segments"], ge=2, le=32)  # clusters (segments) learned
    seed: int = _LEARNER["seed"]
    #: Samples that seed the first segments.
    segment_warmup: int = Field(default=_LEARNER["segment_warmup"], ge=1)
    #: Labels before the prior gives way.
    churn_min_labels: int = Field(default=_LEARNER["churn_min_labels"], ge=1)
    #: Samples between published versions.
    publish_every: int = Field(default=_LEARNER["publish_every"], ge=1)
    #: Younger users send no segment samples.
    segment_min_age_days: float = Field(default=_LEARNER["segment_min_age_days"], ge=0)
    #: Or start segments with what came in this long.
    segment_warmup_days: float = Field(default=_LEARNER["segment_warmup_days"], gt=0)
    #: No activity this long after a decision: churned.
    churn_horizon_days: float = Field(default=_LEARNER["churn_horizon_h"] / 24, gt=0)
    decision_every_h: float = Field(default=24, gt=0)  # decision points after signup
    decision_early_h: list[PositiveFloat] = Field(default=[6], max_length=8)  # and these before
    hysteresis: float = Field(default=0.15, ge=0, le=2)  # margin before changing segment
    rescore_every_min: float = Field(default=60, ge=0)  # event time between rescorings
    signing_key: SecretStr | None = None  # HMAC key of model snapshots; Kafka mode needs it
    signing_key_id: str = Field(default="m1", pattern=r"^[A-Za-z0-9_-]{1,16}$")
    #: Event time scorers reserve ahead: a new version takes force at most this much
    #: later, and the model store is asked once per this much event time.
    reserve_s: float = Field(default=300, gt=0)

    def learner(self) -> LearnerSettings:
        return LearnerSettings(
            segments=self.segments,
            seed=self.seed,
            segment_warmup=self.segment_warmup,
            churn_min_labels=self.churn_min_labels,
            publish_every=self.publish_every,
            segment_min_age_days=self.segment_min_age_days,
            segment_warmup_days=self.segment_warmup_days,
            churn_horizon_h=self.churn_horizon_h,
        )

    @property
    def churn_horizon_h(self) -> int:
        return round(self.churn_horizon_days * 24)


class MetricsSettings(_Section):
    port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus endpoint; off if unset
    host: str = "127.0.0.1"  # "0.0.0.0" in a container, for Prometheus and probes


class CollectSection(_Section):
    """``firstmile collect``: Segment's HTTP Tracking API into the events topic."""

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    write_keys: list[SecretStr] = []  # Segment write keys accepted; none: anyone may send


class ServeSection(_Section):
    """``firstmile serve``: the decision API."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: list[SecretStr] = []  # bearer tokens; none: /v1 is open (keep it on loopback)
    cors_origins: list[str] = []  # browser apps allowed to call it ("*": any)


class FirstmileConfig(BaseSettings):
    """The whole configuration, frozen once loaded."""

    model_config = SettingsConfigDict(
        env_prefix="FIRSTMILE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    limits: LimitSettings = LimitSettings()
    dedup: DedupSettings = DedupSettings()
    recovery: RecoverySettings = RecoverySettings()
    metrics: MetricsSettings = MetricsSettings()
    serve: ServeSection = ServeSection()
    collect: CollectSection = CollectSection()
    profile: ProfileSection = ProfileSection()
    identity: IdentitySection = IdentitySection()
    timers: TimerSection = TimerSection()
    privacy: PrivacySection = PrivacySection()
    models: ModelSection = ModelSection()
    events_mapping: Path = CONFIG_DIR / "events.toml"
    paths: Path = CONFIG_DIR / "paths.toml"  # onboarding paths
    rules: Path = CONFIG_DIR / "rules.toml"  # trigger rules
    experiments: Path = CONFIG_DIR / "experiments.toml"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment overrides the file


def load_config(path: Path | None) -> FirstmileConfig:
    """Read ``path`` (or only defaults and the environment); raise ``ConfigError`` if bad."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
        here = Path(path).resolve().parent  # relative paths in the file are relative to it
        for name in ("events_mapping", "paths", "rules", "experiments"):
            mapping = data.get(name)
            if isinstance(mapping, str) and not Path(mapping).is_absolute():
                data[name] = str(here / mapping)
        privacy = data.get("privacy")
        geo_db = privacy.get("geo_db") if isinstance(privacy, dict) else None
        if isinstance(privacy, dict) and isinstance(geo_db, str) and not Path(geo_db).is_absolute():
            privacy["geo_db"] = str(here / geo_db)
    try:
        return FirstmileConfig(**data)
    except SettingsError as exc:  # an environment override that does not parse
        raise ConfigError(
            "environment",
            f"{exc} (lists and tables in FIRSTMILE_* variables are JSON, "
            """e.g. FIRSTMILE_KAFKA__BOOTSTRAP_SERVERS='["127.0.0.1:9092"]')""",
        ) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(config)"
        problem = first["msg"]
        if first.get("type") == "extra_forbidden":
            problem = "unknown field"
        more = len(exc.errors()) - 1
        raise ConfigError(field, problem + (f" (and {more} more)" if more else "")) from exc
