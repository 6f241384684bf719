from __future__ import annotations

import pytest

from tether.config import ConfigError, load_settings


def test_layers_defaults_file_env_flags(tmp_path):
    conf = tmp_path / "t.toml"
    conf.write_text('[hub]\nport = 9000\nwake_timeout_s = 5\nkeepalive_s = 2\n')
    env = {"TETHER_KEEPALIVE_S": "0.25", "TETHER_WAKE_TIMEOUT_S": "7.5"}
    s = load_settings(conf, env=env, overrides={"wake_timeout_s": 1, "host": None})
    assert s.port == 9000  # file
    assert s.keepalive_s == 0.25  # env beats file
    assert s.wake_timeout_s == 1.0  # flag beats env
    assert s.host == "127.0.0.1" and s.infer_timeout_s == 600  # defaults
    assert s.heartbeat_interval_s == 30


def test_auth_defaults_off_only_on_loopback():
    assert not load_settings(env={}, overrides={"host": "127.0.0.1"}).auth_enabled
    assert not load_settings(env={}, overrides={"host": "::1"}).auth_enabled
    assert load_settings(env={}, overrides={"host": "0.0.0.0"}).auth_enabled
    assert not load_settings(env={"TETHER_AUTH": "off"}, overrides={"host": "0.0.0.0"}).auth_enabled


@pytest.mark.parametrize(
    "text, env, needle",
    [
        ("[hub]\nport = 'x'\n", {}, "port"),
        ("[hub]\nwake_timout_s = 3\n", {}, "wake_timout_s"),
        ("not toml = = 1", {}, "TOML"),
        ("", {"TETHER_GC_INTERVAL_S": "-1"}, "TETHER_GC_INTERVAL_S"),
        ("", {"TETHER_AUTH": "maybe"}, "auth"),
        ("[hub]\npool_routing = 'random'\n", {}, "pool_routing"),
        ("[hub]\nhttp_keepalive_s = 1.5\n", {}, "http_keepalive_s"),  # gunicorn: whole s
        ("", {"TETHER_HTTP_KEEPALIVE_S": "-1"}, "TETHER_HTTP_KEEPALIVE_S"),
        ("[hub]\nusage_flush_s = 0\n", {}, "usage_flush_s"),  # > 0
        ("", {"TETHER_USAGE_FLUSH_S": "11"}, "TETHER_USAGE_FLUSH_S"),  # at most 10 s
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, env, needle):
    conf = tmp_path / "t.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(conf, env=env)
    assert needle in str(err.value)


def test_pool_routing_defaults_to_affinity(tmp_path):
    assert load_settings(env={}).pool_routing == "affinity"
    conf = tmp_path / "t.toml"
    conf.write_text('[hub]\npool_routing = "round_robin"\n')
    assert load_settings(conf, env={}).pool_routing == "round_robin"
    assert load_settings(env={"TETHER_POOL_ROUTING": "round_robin"}).pool_routing == \
        "round_robin"


def test_a_named_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_cors_origins_from_the_file_and_the_environment(tmp_path):
    conf = tmp_path / "t.toml"
    conf.write_text('[hub]\ncors_origins = ["https://app.example", "http://localhost:3000/"]\n')
    assert load_settings(conf, env={}).cors_origins == ("https://app.example",
                                                        "http://localhost:3000")
    env = {"TETHER_CORS_ORIGINS": "https://a.example, https://b.example:8443"}
    assert load_settings(conf, env=env).cors_origins == ("https://a.example",
                                                         "https://b.example:8443")
    assert load_settings(env={"TETHER_CORS_ORIGINS": "*"}).cors_origins == ("*",)
    assert load_settings(env={}).cors_origins == ()
    for bad in ("app.example", "https://app.example/path"):
        with pytest.raises(ConfigError, match="cors_origins"):
            load_settings(env={"TETHER_CORS_ORIGINS": bad})


def test_every_error_in_the_file_is_reported_at_once(tmp_path, capsys):
    """Issue 12.1: the first bad key used to hide the rest, one fix-and-retry per mistake."""
    from tether.cli import main

    conf = tmp_path / "t.toml"
    conf.write_text(
        '[hub]\nport = "x"\nwake_timout_s = 3\ngc_interval_s = -1\nlog_format = "xml"\n'
        '[[llms]]\nname = "bad/name"\ntype = "openai"\nmodel = "m"\nbase_url = "localhost"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(conf, env={})
    lines = str(err.value).splitlines()
    for key in ("'port'", "'wake_timout_s'", "'gc_interval_s'", "'log_format'",
                "llms[0].name", "llms[0].base_url"):
        assert [line for line in lines if key in line and line.startswith(f"{conf}: ")], key
    assert len(lines) == 6
    assert main(["serve", "--config", str(conf)]) == 2
    assert "llms[0].base_url" in capsys.readouterr().err


def test_every_setting_is_declared_with_its_schema():
    """A field added without setting(...) would be missing from the schema, so its key in
    a file would be refused as unknown: each field states its schema where it is declared."""
    import dataclasses

    from tether.config import Settings
    from tether.publisher.config import BackendConfig, PublisherConfig

    for cls in (Settings, BackendConfig, PublisherConfig):
        bare = [f.name for f in dataclasses.fields(cls) if "schema" not in f.metadata]
        assert bare == [], f"{cls.__name__}: declare {bare} with config_schema.setting()"
