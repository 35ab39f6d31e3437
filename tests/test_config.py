"""Config loading: defaults, coercion, and one clear error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawler.config import load_config
from crawler.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_in_repo_loads() -> None:
    config = load_config(Path(__file__).parent.parent / "config.toml")
    assert config.crawl.seeds
    assert config.politeness.obey_robots is True
    assert config.politeness.delay >= 1.0


def test_minimal_config_gets_defaults_and_resolves_storage_next_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[crawl]\nseeds = ["https://example.com/"]\n'))
    assert config.crawl.max_pages == 1000
    assert config.crawl.max_depth == 10
    assert config.politeness.per_host_concurrency == 2
    assert config.http.max_body_bytes == 5_000_000
    assert config.storage.path == tmp_path / "data" / "crawl.db"


def test_int_accepted_where_float_expected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[crawl]\nseeds = ["http://a.test/"]\n[politeness]\ndelay = 2\n'))
    assert config.politeness.delay == 2.0
    assert isinstance(config.politeness.delay, float)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[crawl]\nseeds = ["http://a.test/"]\nmax_pagez = 3\n', "crawl.max_pagez", "unknown key"),
        ('[crawl]\nseeds = ["http://a.test/"]\n[politness]\n', "[politness]", "unknown section"),
        ('[crawl]\nseeds = ["http://a.test/"]\nmax_pages = "many"\n', "crawl.max_pages", "must be an integer"),
        ('[crawl]\nseeds = ["http://a.test/"]\nmax_pages = -1\n', "crawl.max_pages", "must be ≥ 0"),
        ('[crawl]\nseeds = ["http://a.test/"]\n[politeness]\ndelay = -0.5\n', "politeness.delay", "≥ 0"),
        (
            '[crawl]\nseeds = ["http://a.test/"]\n[politeness]\nobey_robots = "yes"\n',
            "politeness.obey_robots",
            "true or false",
        ),
        ("[crawl]\nseeds = []\n", "crawl.seeds", "at least one"),
        ('[crawl]\nseeds = ["ftp://a.test/"]\n', "crawl.seeds", "not an absolute http(s) URL"),
        ('[crawl]\nseeds = "http://a.test/"\n', "crawl.seeds", "a list of strings"),
        ('[crawl]\nseeds = ["http://a.test/"]\nexclude = ["("]\n', "crawl.exclude", "invalid regex"),
        (
            '[crawl]\nseeds = ["http://a.test/"]\n[politeness]\nconcurrency = 2\nper_host_concurrency = 4\n',
            "politeness.per_host_concurrency",
            "≤ politeness.concurrency",
        ),
        ('[crawl]\nseeds = ["http://a.test/"]\n[http]\ntotal_timeout = 0\n', "http.total_timeout", "≥"),
        (
            '[crawl]\nseeds = ["http://a.test/"]\nallowed_hosts = ["http://a.test/"]\n',
            "crawl.allowed_hosts",
            "not a host name",
        ),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message
    assert info.value.exit_code == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[crawl\nseeds = 1\n")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML"):
        load_config(path)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[crawl]\nseeds = ["http://a.test/"]\n'))
    with pytest.raises(AttributeError):
        config.crawl.max_pages = 5  # type: ignore[misc]


def test_ca_bundle_resolves_next_to_the_file_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    config = load_config(write(tmp_path, '[crawl]\nseeds = ["https://a.test/"]\n[http]\nca_bundle = "ca.pem"\n'))
    assert config.http.ca_bundle == tmp_path / "ca.pem"
    path = write(tmp_path, '[crawl]\nseeds = ["https://a.test/"]\n[http]\nca_bundle = "missing.pem"\n')
    with pytest.raises(ConfigError, match=r"http\.ca_bundle: no such file: .*missing\.pem"):
        load_config(path)
