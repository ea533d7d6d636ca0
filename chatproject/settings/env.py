"""A small typed reader of the environment, for the settings modules only.

Each reader returns a typed value or stops start-up with one line naming the variable
(``SystemExit``), so an operator sees the cause, not a traceback.
"""

from __future__ import annotations

import os
import re
import socket


class ConfigError(SystemExit):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"configuration error: {name}: {problem}")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_gc_thresholds(name: str, raw: str) -> tuple[int, int, int] | None:
    """``"50000,20,100"`` -> the garbage collector's three thresholds; empty -> None (Python's)."""
    if not raw.strip():
        return None
    try:
        values = [int(part) for part in raw.split(",")]
    except ValueError:
        raise ConfigError(name, f"expected three whole numbers like '50000,20,100', got {raw!r}") from None
    if len(values) != 3 or min(values) < 1:
        raise ConfigError(name, f"expected three positive whole numbers, got {raw!r}")
    return values[0], values[1], values[2]


def parse_rate(name: str, raw: str) -> tuple[float, int]:
    """Parse ``"10/s burst 30"`` (also ``/m``) into (tokens per second, burst)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([sm])\s*(?:burst\s+(\d+))?\s*", raw)
    if not match:
        raise ConfigError(name, f"expected a rate like '10/s burst 30', got {raw!r}")
    amount = float(match.group(1))
    per_second = amount if match.group(2) == "s" else amount / 60.0
    burst = int(match.group(3)) if match.group(3) else max(1, int(amount))
    if per_second <= 0 or burst < 1:
        raise ConfigError(name, "rate and burst must be positive")
    return per_second, burst


def parse_hostports(name: str, raw: str) -> list[tuple[str, int]]:
    result = []
    for item in raw.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(name, f"expected host:port[,host:port], got {item.strip()!r}")
        result.append((host, int(port)))
    return result


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.25):
            return True
    except OSError:
        return False
