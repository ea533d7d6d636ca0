"""Start-up validation of the environment, run the way an operator meets it: ``manage.py check``
in a fresh process. A bad value must stop start-up with one line that names the variable."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage_check(
    tmp_path: Path, settings_module: str = "chatproject.settings.base", **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        # Start from a clean slate for everything the settings read, so only ``env`` decides.
        if not key.startswith(("REDIS_", "DJANGO_", "RATE_LIMIT_", "CHAT_MODE", "DATABASE_URL"))
    }
    environ.update(
        {
            "DJANGO_SETTINGS_MODULE": settings_module,
            "CHAT_MODE": "single",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "LOG_LEVEL": "WARNING",
        }
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_defaults_start(tmp_path):
    result = manage_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("value", ["abc", "63 79", "-1", "0"])
def test_bad_redis_port_stops_start_up_naming_it(tmp_path, value):
    result = manage_check(tmp_path, REDIS_PORT=value)
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "REDIS_PORT" in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["fast", "10 per second", "0/s burst 3", "10/s burst 0", "10/h", "-1/s"])
def test_bad_rate_limit_stops_start_up_naming_it(tmp_path, value):
    result = manage_check(tmp_path, RATE_LIMIT_MESSAGES=value)
    assert result.returncode != 0
    assert "RATE_LIMIT_MESSAGES" in one_line(result.stderr)


@pytest.mark.parametrize(
    "name",
    [
        "RATE_LIMIT_TYPING",
        "RATE_LIMIT_READS",
        "RATE_LIMIT_STATUS",
        "RATE_LIMIT_PRESENCE_SYNC",
        "RATE_LIMIT_PINGS",
        "RATE_LIMIT_RESUMES",
        "RATE_LIMIT_TICKETS",
        "RATE_LIMIT_CONVERSATIONS",
        "RESUME_MAX_TOTAL_MESSAGES",
    ],
)
def test_a_bad_budget_stops_start_up_naming_it(tmp_path, name):
    result = manage_check(tmp_path, **{name: "0"})
    assert result.returncode != 0
    assert name in one_line(result.stderr)


@pytest.mark.parametrize("value", ["10/s burst 30", "600/m", " 5/s "])
def test_good_rate_limit_starts(tmp_path, value):
    result = manage_check(tmp_path, RATE_LIMIT_MESSAGES=value)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("REDIS_SSL", "maybe"), ("MESSAGE_MAX_CHARS", "lots"), ("CHAT_MODE", "swarm"), ("DJANGO_DEBUG", "2")],
)
def test_other_bad_values_name_their_variable(tmp_path, name, value):
    result = manage_check(tmp_path, **{name: value})
    assert result.returncode != 0
    assert name in one_line(result.stderr)


def test_production_without_secret_key_refuses_to_start(tmp_path):
    result = manage_check(tmp_path, settings_module="chatproject.settings.production")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in one_line(result.stderr)


def test_production_with_blank_secret_key_refuses_to_start(tmp_path):
    result = manage_check(tmp_path, settings_module="chatproject.settings.production", DJANGO_SECRET_KEY="   ")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in one_line(result.stderr)


def test_production_with_secret_key_starts(tmp_path):
    result = manage_check(
        tmp_path,
        settings_module="chatproject.settings.production",
        DJANGO_SECRET_KEY="a-real-secret-" + "x" * 50,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def _load_settings(monkeypatch, **env: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    original = sys.modules.pop("chatproject.settings.base", None)
    try:
        return importlib.import_module("chatproject.settings.base")
    finally:
        if original is not None:
            sys.modules["chatproject.settings.base"] = original


def test_settings_select_the_sharded_layer_and_refuse_conflicts(monkeypatch):
    base = _load_settings(
        monkeypatch, REDIS_CLUSTER="true", REDIS_HOST="cfg.example", REDIS_USERNAME="app", REDIS_PASSWORD="p@ss"
    )
    layer = base.CHANNEL_LAYERS["default"]
    assert layer["BACKEND"] == "channels_redis_cluster.RedisClusterChannelLayer"
    assert layer["CONFIG"]["hosts"] == [{"host": "cfg.example", "port": base.REDIS_PORT}]
    assert layer["CONFIG"]["cluster_kwargs"]["username"] == "app"
    assert base.REDIS["cluster"] is True and base.REDIS["username"] == "app"
    with pytest.raises(SystemExit, match="REDIS_CLUSTER"):
        _load_settings(monkeypatch, REDIS_SENTINELS="127.0.0.1:26379")
    monkeypatch.delenv("REDIS_SENTINELS")
    with pytest.raises(SystemExit, match="REDIS_DB"):
        _load_settings(monkeypatch, REDIS_DB="2")
    monkeypatch.delenv("REDIS_DB")
    with pytest.raises(SystemExit, match="REDIS_CLUSTER"):
        _load_settings(monkeypatch, REDIS_CLUSTER="maybe")


@pytest.mark.parametrize("value", ["fast", "1,2", "0,10,10", "700,10,ten"])
def test_bad_gc_thresholds_stop_start_up_naming_them(tmp_path, value):
    result = manage_check(tmp_path, GC_THRESHOLDS=value)
    assert result.returncode != 0
    assert "GC_THRESHOLDS" in one_line(result.stderr)


def test_start_up_sets_the_collectors_thresholds_and_freezes_what_it_made(settings):
    import gc

    from core.startup import tune_gc

    before = gc.get_threshold()
    settings.GC_THRESHOLDS, settings.GC_FREEZE_AT_START = (40000, 15, 90), True
    try:
        tune_gc()
        assert gc.get_threshold() == (40000, 15, 90)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    settings.GC_THRESHOLDS, settings.GC_FREEZE_AT_START = None, False
    tune_gc()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
