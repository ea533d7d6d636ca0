"""The seq guarantee on SQLite, the embedded mode's database, which takes the ORM form of the
send (PostgreSQL has its own one-statement form, tested in test_services.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.processes import ROOT, app_env


def test_concurrent_sends_on_sqlite_get_gap_free_unique_seqs(tmp_path):
    env = app_env(
        CHAT_MODE="single",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        RATE_LIMIT_MESSAGES="100000/s burst 100000",
        LOG_LEVEL="WARNING",
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "chat" / "sqlite_sends.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["vendor"] == "sqlite"
    assert out["prepared"] == {"token_user": True, "conversation_seqs": True, "resumed": [39, 40]}
    assert out["errors"] == []
    assert out["seqs"] == list(range(1, 41)) and out["last_seq"] == 40
    assert out["repeat"] is True
