"""Config: defaults, TOML, FIRSTMILE_* overrides, one clear error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from firstmile.flows.config import load_config
from firstmile.operators.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "firstmile.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config.topics.segments == "firstmile.segments"
    assert config.kafka.client_options()["security_protocol"] == "PLAINTEXT"


def test_file_values_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[kafka]\nbootstrap_servers = ["k1:9092"]\n[topics]\nevents = "in"\n')
    monkeypatch.setenv("FIRSTMILE_TOPICS__EVENTS", "from-env")
    config = load_config(path)
    assert config.kafka.bootstrap_servers == ["k1:9092"]
    assert config.topics.events == "from-env"


def test_sasl_ssl_passthrough_keeps_the_secret_out_of_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
        'sasl_plain_username = "svc"\nsasl_plain_password = "hunter2"\n'
        'ssl_cafile = "/etc/ca.pem"\n',
    )
    config = load_config(path)
    options = config.kafka.client_options()
    assert options["sasl_plain_password"] == "hunter2"
    assert options["ssl_cafile"] == "/etc/ca.pem"
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("[kafka]\nbatch_size = 0\n", "kafka.batch_size", "greater than or equal to 1"),
        ("[kafka]\nsecurity_protocol = 'TLS'\n", "kafka.security_protocol", "PLAINTEXT"),
        ("[kafka]\nbootstrap_servers = []\n", "kafka.bootstrap_servers", "at least 1"),
        ("[redis]\nurl = 'http://x'\n", "redis.url", "pattern"),
        ("[kafak]\n", "kafak", "unknown field"),
        ("[limits]\nmax_depth = 'deep'\n", "limits.max_depth", "integer"),
        ("[topics\n", "firstmile.toml", "not valid TOML"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert field in caught.value.field
    assert problem in caught.value.problem
    assert "\n" not in str(caught.value)


def test_bad_env_override_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRSTMILE_KAFKA__BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match=r"kafka\.batch_size"):
        load_config(None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
