from __future__ import annotations

import pytest

from tether.publisher.config import PublisherConfigError, load, parse

GOOD = """
hub = "http://127.0.0.1:8080"
key_env = "TETHER_PUBLISHER_KEY"
session_file = "/tmp/x-session"

[[backends]]
name = "llama3-laptop"
type = "openai"
model = "llama3.1:8b"
base_url = "http://127.0.0.1:11434/v1/"
max_concurrency = 2
idle_sleep_s = 900
[backends.wake]
wol = {mac = "aa:bb:cc:dd:ee:ff", broadcast = "192.168.1.255"}
[backends.sleep]
command = ["systemctl", "stop", "ollama"]
"""


def test_the_documented_shape_parses(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    config = load(path)
    assert config.hub == ("http://127.0.0.1:8080",) and config.key_env == "TETHER_PUBLISHER_KEY"
    backend = config.backends[0]
    assert backend.base_url == "http://127.0.0.1:11434/v1"  # trailing slash dropped
    assert backend.max_concurrency == 2 and backend.idle_sleep_s == 900
    assert backend.wake.wol == {"mac": "aa:bb:cc:dd:ee:ff", "broadcast": "192.168.1.255",
                                "port": 9}
    assert backend.sleep.command == ("systemctl", "stop", "ollama")


def test_the_shipped_example_parses():
    from tether.config import REPO_ROOT

    config = load(REPO_ROOT / "conf" / "publisher.example.toml")
    assert config.backends


def base(**backend) -> dict:
    return {"hub": "http://h:1", "backends": [{"name": "a", "model": "m",
                                                 "base_url": "http://b/v1", **backend}]}


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"backends": []}, "'hub' is required"),
        ({"hub": "ftp://x", "backends": [{}]}, "hub"),
        ({"hub": "http://h"}, "[[backends]]"),
        (base(max_concurrency=0), "max_concurrency"),
        (base(max_concurrency=4097), "1 to 4096"),  # the hub's maxConcurrency bound
        (base(pool="yes"), "pool: must be true or false"),
        (base(name="bad/name"), "backends[0].name"),
        (base(base_url="localhost:11434"), "base_url"),
        (base(wake={"command": "systemctl start"}), "wake.command"),
        (base(wake={"command": ["a"], "http": {"url": "http://x"}}), "exactly one"),
        (base(wake={"wol": {"mac": "nope"}}), "wake.wol.mac"),
        (base(idle_sleep_s=5), "sleep"),
        (base(color="blue"), "color"),
        ({**base(), "hub": []}, "pub.toml: hub: must list at least one hub URL"),
        ({**base(), "hub": ["http://a:1", "a:2"]}, "hub[1]: must be an http(s) URL (not 'a:2')"),
        ({**base(), "hub": ["http://a:1", 8080]}, "hub[1]: must be an http(s) URL (not 8080)"),
        ({**base(), "hub": 8080}, "hub: must be an http(s) URL or a list of them"),
        ({**base(), "hub": ["http://a:1", "http://a:1"]}, "hub: lists one URL twice"),
        ({**base(), "backends": [base()["backends"][0]] * 2}, "share one name"),
    ],
)
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(PublisherConfigError) as err:
        parse(data, "pub.toml")
    assert needle in str(err.value) and "pub.toml" in str(err.value)


def test_every_error_in_the_file_is_reported_at_once():
    """Issue 12.1: the first bad key used to hide the rest."""
    data = base(max_concurrency=0, base_url="localhost", color="blue",
                wake={"wol": {"mac": "nope"}})
    with pytest.raises(PublisherConfigError) as err:
        parse({**data, "hub": "ftp://x"}, "pub.toml")
    lines = str(err.value).splitlines()
    for needle in ("pub.toml: hub:", "backends[0].max_concurrency", "backends[0].base_url",
                   "'color'", "backends[0].wake.wol.mac"):
        assert [line for line in lines if needle in line and line.startswith("pub.toml: ")], needle
    assert len(lines) == 5


def test_the_session_file_flag_overrides_the_config_file(tmp_path):
    import argparse

    from tether.publisher.main import add_arguments, config_from_args

    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--config", str(path)])).session_file == (
        "/tmp/x-session")
    args = parser.parse_args(["--config", str(path), "--session-file", "/tmp/flag-session"])
    config = config_from_args(args)
    assert config.session_file == "/tmp/flag-session"
    assert config.backends[0].name == "llama3-laptop"  # the rest of the file still applies


def test_whole_numbers_written_as_floats_become_ints():
    backend = parse(base(max_concurrency=2.0, sleep={"wol": {"mac": "aa:bb:cc:dd:ee:ff",
                                                            "port": 7.0}}), "p").backends[0]
    assert type(backend.max_concurrency) is int and backend.max_concurrency == 2
    assert type(backend.sleep.wol["port"]) is int


def test_pool_is_off_unless_the_backend_table_or_the_flag_says_so():
    import argparse

    from tether.publisher.main import add_arguments, config_from_args

    assert parse(base(), "p.toml").backends[0].pool is False
    assert parse(base(pool=True), "p.toml").backends[0].pool is True
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = ["--hub", "http://h:1", "--name", "a", "--model", "m", "--backend", "http://b/v1"]
    assert config_from_args(parser.parse_args(flags)).backends[0].pool is False
    assert config_from_args(parser.parse_args([*flags, "--pool"])).backends[0].pool is True


def test_hub_is_one_url_or_a_list_tried_in_order(tmp_path):
    assert parse(base(), "p.toml").hub == ("http://h:1",)
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace('hub = "http://127.0.0.1:8080"',
                                 'hub = ["http://a:8080/", "https://b:8443"]'))
    assert load(path).hub == ("http://a:8080", "https://b:8443")  # in order, no trailing /


def test_one_hub_keeps_the_session_file_name_it_had_before_hub_could_be_a_list():
    """The default session file is named after the hub URL and the backend names; a
    publisher upgraded with the same config must find its old file (its session id)."""
    import hashlib

    config = parse(base(), "p.toml")
    digest = hashlib.sha256(b"http://h:1\na").hexdigest()[:16]
    assert config.session_path.name == f"publisher-{digest}.session"
    assert parse({**base(), "hub": ["http://h:1", "http://h:2"]}, "p.toml").session_path != (
        config.session_path)


def test_the_hub_flag_repeated_lists_several_hubs():
    import argparse

    from tether.publisher.main import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    rest = ["--name", "a", "--model", "m", "--backend", "http://b/v1"]
    one = parser.parse_args(["--hub", "http://a:1", *rest])
    assert config_from_args(one).hub == ("http://a:1",)
    two = parser.parse_args(["--hub", "http://a:1", "--hub", "http://b:2", *rest])
    assert config_from_args(two).hub == ("http://a:1", "http://b:2")
    with pytest.raises(PublisherConfigError) as err:
        config_from_args(parser.parse_args(["--hub", "http://a:1", "--hub", "b:2", *rest]))
    assert "command line: hub[1]: must be an http(s) URL" in str(err.value)


def test_each_bad_hub_in_the_list_is_reported_with_the_other_errors():
    data = {**base(max_concurrency=0), "hub": ["http://a:1", "a:2", "ftp://c"]}
    with pytest.raises(PublisherConfigError) as err:
        parse(data, "pub.toml")
    assert str(err.value).splitlines() == [
        "pub.toml: backends[0].max_concurrency: must be a whole number, 1 to 4096 (not 0)",
        "pub.toml: hub[1]: must be an http(s) URL (not 'a:2')",
        "pub.toml: hub[2]: must be an http(s) URL (not 'ftp://c')",
    ]


def discovering(**backend) -> dict:
    return {"hub": "http://h:1", "backends": [{"base_url": "http://b/v1", **backend}]}


def test_a_backend_without_name_and_model_discovers_its_models():
    config = parse(discovering(prefix="gpu-", max_concurrency=2), "t")
    backend = config.backends[0]
    assert backend.discovers and backend.prefix == "gpu-" and backend.max_concurrency == 2
    assert backend.key == "gpu-*@http://b/v1"
    assert not parse(base(), "t").backends[0].discovers


@pytest.mark.parametrize("data, needle", [
    (discovering(name="a"), "give name and model together, or neither"),
    (discovering(model="m"), "give name and model together, or neither"),
    (base(prefix="x-"), "prefix is for a backend without name and model"),
    (discovering(prefix="-x"), "prefix: must be empty or start a valid Llm name"),
    ({"hub": "http://h:1", "backends": [{"base_url": "http://b/v1"}] * 2},
     "two backends list the same base_url with the same prefix"),
])
def test_discovery_config_errors_name_the_key(data, needle):
    with pytest.raises(PublisherConfigError) as exc:
        parse(data, "t")
    assert needle in str(exc.value)
