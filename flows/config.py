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
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from operators.decode import DecodeLimits
from operators.errors import ConfigError
from operators.resources import CONFIG_DIR


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

    def client_options(self) -> dict[str, Any]:
        """kafka-python keyword arguments shared by the consumer and the producer."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
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


class LimitSettings(_Section):
    max_event_bytes: int = Field(default=32 * 1024, ge=256, le=16 * 1024 * 1024)
    max_depth: int = Field(default=32, ge=2, le=512)
    max_future_skew_s: int = Field(default=86_400, ge=0)

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            self.max_event_bytes, self.max_depth, timedelta(seconds=self.max_future_skew_s)
        )


class DedupSettings(_Section):
    capacity: int = Field(default=256, ge=1, le=100_000)
    window_s: int = Field(default=86_400, ge=1)


class RecoverySettings(_Section):
    dir: Path | None = None  # off when unset
    partitions: int = Field(default=1, ge=1)
    snapshot_interval_s: float = Field(default=5.0, gt=0)
    backup_interval_s: float = Field(default=0.0, ge=0)


class MetricsSettings(_Section):
    port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus endpoint; off if unset


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
    events_mapping: Path = CONFIG_DIR / "events.toml"

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
        mapping = data.get("events_mapping")
        if isinstance(mapping, str) and not Path(mapping).is_absolute():
            data["events_mapping"] = str(Path(path).resolve().parent / mapping)
    try:
        return FirstmileConfig(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(config)"
        problem = first["msg"]
        if first.get("type") == "extra_forbidden":
            problem = "unknown field"
        more = len(exc.errors()) - 1
        raise ConfigError(field, problem + (f" (and {more} more)" if more else "")) from exc
