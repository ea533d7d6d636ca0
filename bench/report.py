"""Summaries, the table, and the charts (PNG) of a benchmark result."""

from __future__ import annotations

import re
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

P99_LIMIT_MS = 250.0
DELIVERED_MIN = 0.999


# --- statistics ---------------------------------------------------------------------------------


def pct(values: list[float] | array, p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return float(values[k])


def lat_summary(values: array) -> dict[str, float]:
    s = sorted(values)
    return {
        "n": len(s),
        "p50_ms": pct(s, 50) * 1000,
        "p95_ms": pct(s, 95) * 1000,
        "p99_ms": pct(s, 99) * 1000,
        "max_ms": (s[-1] * 1000) if s else float("nan"),
    }


# --- profile summary ----------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
APP_DIRS = ("chat", "presence", "chatproject", "health")


def _frame(frame: str) -> tuple[str, str, bool]:
    """(``function (file)``, package, in application code) of one py-spy frame."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?", False
    path = m.group("file").replace("\\", "/")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    path = re.sub(r"^.*?/(chat|presence|chatproject|health)/", r"\1/", path)
    top = path.split("/", 1)[0].removesuffix(".py")
    app = top in APP_DIRS and "/" in path
    return f"{m.group('func')} ({path})", (f"app:{top}" if app else top), app


def summarise_profile(text: str, top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed (``--format raw``) output: self and inclusive samples per function,
    self samples per package, samples per thread kind, and ``app_attributed``: each sample
    charged to the innermost application frame on its stack (the application code that caused
    the work, including what it called in libraries)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    mods: Counter[str] = Counter()
    app_attr: Counter[str] = Counter()
    app_incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f]
        while frames and frames[0].startswith(("process ", "thread ")):
            frames.pop(0)
        if not frames:
            continue
        total += count
        threads["worker threads (sync_to_async)" if frames[0].startswith("Thread._bootstrap") else "event loop"] += (
            count
        )
        parsed = [_frame(f) for f in frames]
        self_c[parsed[-1][0]] += count
        mods[parsed[-1][1]] += count
        for name in {name for name, _, _ in parsed}:
            incl[name] += count
        apps = [name for name, _, app in parsed if app]
        app_attr[apps[-1] if apps else "(no application frame)"] += count
        for name in set(apps):
            app_incl[name] += count

    def table(c: Counter[str]) -> list[list[Any]]:
        return [[name, n, round(100 * n / total, 1) if total else 0.0] for name, n in c.most_common(top)]

    return {
        "samples": total,
        "threads": table(threads),
        "self_by_package": table(mods),
        "self": table(self_c),
        "inclusive": table(incl),
        "app_inclusive": table(app_incl),
        "app_attributed": table(app_attr),
    }


# --- summary and table --------------------------------------------------------------------------


def _get(d: Any, *path: Any, default: Any = None) -> Any:
    for p in path:
        if (isinstance(d, dict) and p in d) or (isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d)):
            d = d[p]
        else:
            return default
    return d


def _ratio(x: Any, y: Any) -> float | None:
    try:
        if x is None or y is None or y == 0 or x != x or y != y:
            return None
        return float(x) / float(y)
    except (TypeError, ValueError):
        return None


def s1_split(s1: dict[str, Any] | None, instances: int) -> dict[str, float] | None:
    """S1 has one sender socket, on instance 0: the other instances only fan out. Their CPU per
    delivery is the fan-out cost; what instance 0 spends beyond that for its own deliveries is
    the cost of handling the sends (parse, persist, publish, ack), per message."""
    if not s1 or instances < 2:
        return None
    cpu = s1.get("server_cpu_per_instance_s") or []
    if len(cpu) != instances:
        return None
    sender_deliveries = s1["deliveries"] - s1["delivered"]
    others = s1["latency_cross"]["n"] + sender_deliveries * (instances - 1) / instances
    own = s1["latency_same"]["n"] + sender_deliveries / instances
    if others <= 0 or not s1["sent"]:
        return None
    per_delivery = sum(cpu[1:]) / others
    return {
        "fanout_us_per_delivery": per_delivery * 1e6,
        "send_path_ms_per_message": (cpu[0] - per_delivery * own) / s1["sent"] * 1e3,
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    t = results["targets"]
    for target in t.values():
        fan = target.get("fanout") or {}
        split = s1_split(fan.get("s1"), fan.get("instances", 0))
        if split:
            fan["s1"]["cost_split"] = split
    chat, raw = t.get("chat", {}), t.get("raw", {})

    def common_rate_cpu() -> tuple[float | None, float | None, float | None]:
        cs = {s["rate"]: s for s in _get(chat, "fanout", "s2", "steps", default=[]) if s["ok"]}
        rs = {s["rate"]: s for s in _get(raw, "fanout", "s2", "steps", default=[]) if s["ok"]}
        both = sorted(set(cs) & set(rs))
        if not both:
            return None, None, None
        r = both[-1]
        return r, cs[r]["cpu_us_per_delivery"], rs[r]["cpu_us_per_delivery"]

    rate, c_cpu, r_cpu = common_rate_cpu()
    checks = []

    def check(name: str, c: Any, r: Any, target: str, ok: bool | None, unit: str = "") -> None:
        checks.append({"name": name, "chat": c, "raw": r, "ratio": _ratio(c, r), "target": target, "ok": ok,
                       "unit": unit})  # fmt: skip

    s1c, s1r = _get(chat, "fanout", "s1", "cpu_us_per_delivery"), _get(raw, "fanout", "s1", "cpu_us_per_delivery")
    ratio = _ratio(s1c, s1r)
    check("CPU per delivery, S1", s1c, s1r, "<= 1.3x raw", None if ratio is None else ratio <= 1.3, "us")
    if rate is not None:
        ratio = _ratio(c_cpu, r_cpu)
        check(f"CPU per delivery, S2 at {rate:g} msg/s", c_cpu, r_cpu, "<= 1.3x raw",
              None if ratio is None else ratio <= 1.3, "us")  # fmt: skip
    c2, r2 = _get(chat, "fanout", "s2", "highest_ok_rate"), _get(raw, "fanout", "s2", "highest_ok_rate")
    ratio = _ratio(c2, r2)
    check("S2 highest OK rate", c2, r2, ">= 0.8x raw", None if ratio is None else ratio >= 0.8, "msg/s")
    c1, r1 = _get(chat, "fanout", "s1", "latency_cross", "p99_ms"), _get(raw, "fanout", "s1", "latency_cross", "p99_ms")
    ratio = _ratio(c1, r1)
    check("S1 cross-instance p99", c1, r1, "<= 1.5x raw", None if ratio is None else ratio <= 1.5, "ms")
    for i, stage in enumerate(_get(chat, "s3", "stages", default=[])):
        rstage = _get(raw, "s3", "stages", i, default={})
        n = stage["target_connections"]
        ratio = _ratio(stage["kib_per_connection"], rstage.get("kib_per_connection"))
        check(f"S3 memory per idle connection ({n})", stage["kib_per_connection"], rstage.get("kib_per_connection"),
              "<= 1.3x raw", None if ratio is None else ratio <= 1.3, "KiB")  # fmt: skip
        ratio = _ratio(stage["connects_per_s"], rstage.get("connects_per_s"))
        check(f"S3 connect rate, new users ({n})", stage["connects_per_s"], rstage.get("connects_per_s"),
              ">= 0.5x raw", None if ratio is None else ratio >= 0.5, "conn/s")  # fmt: skip
        c, r = stage.get("server_cpu_ms_per_connect"), rstage.get("server_cpu_ms_per_connect")
        ratio = _ratio(c, r)
        check(f"S3 CPU per connect, new users ({n})", c, r, "<= 2x raw", None if ratio is None else ratio <= 2.0, "ms")
    back, rback = _get(chat, "s3", "returning", default={}), _get(raw, "s3", "returning", default={})
    if back:
        ratio = _ratio(back.get("connects_per_s"), rback.get("connects_per_s"))
        check("S3 connect rate, returning users", back.get("connects_per_s"), rback.get("connects_per_s"),
              ">= 0.5x raw", None if ratio is None else ratio >= 0.5, "conn/s")  # fmt: skip
        c, r = back.get("server_cpu_ms_per_connect"), rback.get("server_cpu_ms_per_connect")
        ratio = _ratio(c, r)
        check("S3 CPU per connect, returning users", c, r, "<= 2x raw", None if ratio is None else ratio <= 2.0, "ms")
    c4, r4 = _get(chat, "s4", "resume_max_s"), _get(raw, "s4", "resume_max_s")
    if c4 is not None:
        check("S4 all resumed, max", c4, r4, "<= 10 s, all", bool(_get(chat, "s4", "all_resumed")) and c4 <= 10.0, "s")
    return {"checks": checks, "common_ok_rate": rate}


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{nd}f}"
    return str(x)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    t = results["targets"]
    names = [n for n in ("chat", "raw") if n in t]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, Linux {m['kernel']}, Python {m['python']}",
        f"chat: uvicorn --loop uvloop --http httptools --ws {cfg['ws']} ({cfg['server']}), "
        f"channel layer {cfg.get('layer', 'pubsub')}, {cfg['instances']} instances; "
        f"raw: bench/raw_server.py, {cfg['instances']} instances; one redis-server, "
        f"PostgreSQL on 127.0.0.1; {cfg['receivers']} receivers, {cfg['senders']} sender sockets",
        "",
    ]

    def row(label: str, vals: list[str], extra: str = "") -> None:
        lines.append(f"  {label:<44}" + "".join(f"{v:>14}" for v in vals) + (f"   {extra}" if extra else ""))

    hdr = names + (["chat/raw"] if len(names) == 2 else [])
    if any(_get(t[n], "fanout", "s1") for n in names):
        lines.append(f"S1 latency: {cfg['s1_rate']:g} msg/s for {cfg['s1_duration']:g} s, one sender socket")
        row("", hdr)
        for kind in ("same", "cross"):
            for p in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
                vals = [_get(t[n], "fanout", "s1", f"latency_{kind}", p) for n in names]
                r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
                row(f"{kind}-instance {p.replace('_ms', '')} (ms)", [_f(v) for v in vals] + r)
        vals = [_get(t[n], "fanout", "s1", "delivered_ratio") for n in names]
        row("delivered / expected (%)", [_f(v * 100 if v is not None else None, 2) for v in vals])
        vals = [_get(t[n], "fanout", "s1", "cpu_us_per_delivery") for n in names]
        r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
        row("server CPU per delivery (us)", [_f(v) for v in vals] + r)
        for key, label, nd in (("fanout_us_per_delivery", "  fan-out only, per delivery (us)", 1),
                               ("send_path_ms_per_message", "  send path, per message (ms CPU)", 2)):  # fmt: skip
            vals = [_get(t[n], "fanout", "s1", "cost_split", key) for n in names]
            r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
            row(label, [_f(v, nd) for v in vals] + r)
        vals = [_get(t[n], "fanout", "s1", "ack_p50_ms") for n in names]
        row("message.send ack p50 (ms)", [_f(v) for v in vals])
        lines.append("")
    if any(_get(t[n], "fanout", "s2") for n in names):
        lines.append(f"S2 throughput: {cfg['s2_duration']:g} s per rate, {cfg['senders']} sender sockets; "
                     f"OK = >= {DELIVERED_MIN * 100:g}% delivered and p99 < {P99_LIMIT_MS:g} ms")  # fmt: skip
        lines.append(
            f"  {'rate':>6}  " + "  ".join(
                f"{n + ': deliv%':>13} {'p50':>7} {'p99':>7} {'max':>7} {'us/dlv':>7} {'noise%':>6} {'ok':>3}"
                for n in names
            )
        )  # fmt: skip
        rates = sorted({s["rate"] for n in names for s in _get(t[n], "fanout", "s2", "steps", default=[])})
        for rate in rates:
            parts = []
            for n in names:
                s = next((s for s in _get(t[n], "fanout", "s2", "steps", default=[]) if s["rate"] == rate), None)
                if s is None:
                    parts.append(f"{'-':>13} {'':>7} {'':>7} {'':>7} {'':>7} {'':>6} {'':>3}")
                    continue
                la = s["latency_all"]
                parts.append(
                    f"{s['delivered_ratio'] * 100:>13.2f} {la['p50_ms']:>7.1f} {la['p99_ms']:>7.1f} "
                    f"{la['max_ms']:>7.0f} {s['cpu_us_per_delivery']:>7.1f} {s.get('noise_pct', 0):>6.0f} "
                    f"{'yes' if s['ok'] else 'NO':>3}"
                )
            lines.append(f"  {rate:>6g}  " + "  ".join(parts))
        row("", hdr)
        vals = [_get(t[n], "fanout", "s2", "highest_ok_rate") for n in names]
        r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
        row("highest OK rate (msg/s)", [_f(v) for v in vals] + r)
        vals = [_get(t[n], "fanout", "s2", "deliveries_per_s_at_best") for n in names]
        r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
        row("deliveries/s there", [_f(v, 0) for v in vals] + r)
        lines.append("")
    if any(_get(t[n], "s3") for n in names):
        lines.append("S3 idle connections on one instance")
        row("", hdr)
        stages = max(len(_get(t[n], "s3", "stages", default=[])) for n in names)
        for i in range(stages):
            count = next(_get(t[n], "s3", "stages", i, "target_connections") for n in names)
            for key, label, nd in (("kib_per_connection", "KiB per connection", 1),
                                   ("connects_per_s", "connections/s during ramp", 0),
                                   ("server_cpu_ms_per_connect", "server CPU per connect (ms)", 2)):  # fmt: skip
                vals = [_get(t[n], "s3", "stages", i, key) for n in names]
                r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
                row(f"{count}: {label}", [_f(v, nd) for v in vals] + r)
            vals = [_get(t[n], "s3", "stages", i, "failures") for n in names]
            if any(vals):
                row(f"{count}: connect failures", [str(v) for v in vals])
            row(f"{count}: database transactions per connect", [_f(_get(t[n], "s3", "stages", i,
                "db_xacts_per_connect"), 2) for n in names])  # fmt: skip
        if any(_get(t[n], "s3", "returning") for n in names):
            for key, label, nd in (("connects_per_s", "returning users: connections/s", 0),
                                   ("server_cpu_ms_per_connect", "returning users: server CPU per connect (ms)", 2),
                                   ("db_xacts_per_connect", "returning users: database transactions per connect", 2),
                                   ):  # fmt: skip
                vals = [_get(t[n], "s3", "returning", key) for n in names]
                r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 and key != "db_xacts_per_connect" else []
                row(label, [_f(v, nd) for v in vals] + r)
            vals = [_get(t[n], "s3", "returning", "failures") for n in names]
            if any(vals):
                row("returning users: connect failures", [str(v) for v in vals])
        lines.append("")
    if any(_get(t[n], "s4") for n in names):
        instances = cfg.get("storm_instances", 2)
        lines.append(f"S4 reconnect storm: {cfg['storm_clients']} clients on {instances} instances, one SIGKILLed")
        row("", hdr)
        for key, label, nd in (("connect_s", "connecting all clients first (s)", 1),
                               ("on_killed_instance", "clients on the killed instance", 0),
                               ("resumed", "resumed on the survivor", 0),
                               ("resume_p50_s", "time to resumed, p50 (s)", 2),
                               ("resume_max_s", "time to resumed, max (s)", 2),
                               ("reconnected_max_s", "  of which until hello, max (s)", 2),
                               ("resume_ack_wait_max_s", "  hello to resume ack, max (s)", 2),
                               ("survivor_clients_dropped", "survivor's own clients dropped", 0),
                               ("missing_messages", "seq gaps left at the clients", 0),
                               ("live_after_storm.received_within_2s", "next message live within 2 s", 0),
                               ("live_after_storm.received_within_10s", "next message live within 10 s", 0),
                               ("survivor_health_connections", "survivor's /api/health connections.local", 0),
                               ("survivor_clients", "  sockets actually open on it", 0),
                               ("clients_behind_final_seq", "clients missing the last message", 0)):  # fmt: skip
            vals = [_get(t[n], "s4", *key.split(".")) for n in names]
            row(label, [_f(v, nd) for v in vals])
        lines.append("")
    lines.extend(render_redis_cpu(t))
    failed = [(n, sc, t[n][sc]["error"]) for n in t for sc in t[n] if "error" in (t[n][sc] or {})]
    if failed:
        lines.append("Scenarios that did not complete")
        lines.extend(f"  {n} {sc}: {err.splitlines()[0][:300]}" for n, sc, err in failed)
        lines.append("")
    checks = _get(results, "summary", "checks", default=[])
    if checks:
        lines.append("Targets (issue 13; the p99 one is issue 6's)")
        for c in checks:
            verdict = {True: "met", False: "MISSED", None: "n/a"}[c["ok"]]
            lines.append(
                f"  {c['name']:<44}{_f(c['chat'], 1):>12} {c['unit']:<6} vs raw {_f(c['raw'], 1):>10}"
                f"  = {_f(c['ratio'], 2):>5}x  (target {c['target']}): {verdict}"
            )
    mode = "--gil: the thread holding the GIL" if cfg.get("profile_threads") == "gil" else "every active thread"
    for n in names:
        for title, prof in (
            (f"S2 step at {results.get('profile_rate')} msg/s", _get(t[n], "fanout", "profile", "profiles")),
            ("S3 ramp (first stage)", _get(t[n], "s3", "stages", 0, "profiles")),
            ("S4, the survivor after the kill", _get(t[n], "s4", "profiles")),
        ):
            if prof:
                lines.append("")
                lines.extend(render_profile(f"Profile of {n}, {title} (py-spy {mode}, % of samples)", prof))
    return "\n".join(lines)


def fanout_steps(target: dict[str, Any]) -> list[dict[str, Any]]:
    """S1 and the S2 steps of one target, in order."""
    s1 = _get(target, "fanout", "s1")
    return ([s1] if s1 else []) + list(_get(target, "fanout", "s2", "steps", default=[]))


def render_redis_cpu(t: dict[str, Any]) -> list[str]:
    """Redis CPU per delivery, from INFO cpu of every node before and after each step: the one
    redis-server of ``chat`` (and ``raw``) next to each master of ``chat-cluster``."""
    cluster = t.get("chat-cluster")
    if not cluster or not fanout_steps(cluster):
        return []
    singles = [n for n in ("chat", "raw") if fanout_steps(t.get(n, {}))]
    by_step = {n: {(s["label"], s["rate"]): s for s in fanout_steps(t[n])} for n in singles}
    steps = fanout_steps(cluster)
    masters = max(sum(1 for node in s.get("redis_nodes", []) if node["role"] == "master") for s in steps)
    lines = [
        "Redis CPU per delivery (us; INFO cpu used_cpu_sys + used_cpu_user before and after each step,",
        "divided by the step's deliveries): one redis-server against each master of a 3-master cluster",
    ]
    head = f"  {'step':<16}" + "".join(f"{n + ': Redis':>14}" for n in singles)
    head += "".join(f"{'master ' + str(i + 1):>10}" for i in range(masters))
    head += f"{'masters':>9}{'replicas':>9}   {'server us/dlv chat / cluster':>29}   {'p99 ms chat / cluster':>22}"
    lines.append(head)
    for s in steps:
        key = (s["label"], s["rate"])
        line = f"  {s['label'] + ' ' + format(s['rate'], 'g') + ' msg/s':<16}"
        for n in singles:
            one = by_step[n].get(key)
            node = _get(one, "redis_nodes", 0, default={}) if one else {}
            line += f"{_f(node.get('us_per_delivery'), 2):>14}"
        nodes = s.get("redis_nodes", [])
        ms = [node for node in nodes if node["role"] == "master"]
        line += "".join(f"{_f(node['us_per_delivery'], 2):>10}" for node in ms)
        line += "".join(f"{'':>10}" for _ in range(masters - len(ms)))
        deliveries = s.get("deliveries") or 0
        m_sum = sum(node["cpu_s"] for node in ms) / deliveries * 1e6 if deliveries else None
        r_sum = (
            sum(node["cpu_s"] for node in nodes if node["role"] == "replica") / deliveries * 1e6 if deliveries else None
        )
        chat = by_step.get("chat", {}).get(key)
        line += f"{_f(m_sum, 2):>9}{_f(r_sum, 2):>9}"
        server = f"{_f(_get(chat, 'cpu_us_per_delivery'))} / {_f(s.get('cpu_us_per_delivery'))}"
        p99 = f"{_f(_get(chat, 'latency_all', 'p99_ms'))} / {_f(_get(s, 'latency_all', 'p99_ms'))}"
        lines.append(line + f"   {server:>29}   {p99:>22}")
    delivered = [s.get("delivered_ratio", 0) for s in steps]
    lines.append(f"  chat-cluster delivered {min(delivered) * 100:.2f}% or more in every step; "
                 "one conversation, so its shard channel lives on one master")  # fmt: skip
    lines.append("")
    return lines


def render_profile(title: str, profiles: list[dict[str, Any]], top: int = 12) -> list[str]:
    lines = [title]
    for p in profiles:
        if "self" not in p:
            lines.append(f"  {p.get('instance')}: {p.get('error')}")
            continue
        lines.append(f"  {p['instance']}: {p['samples']} samples (100 Hz); "
                     + ", ".join(f"{name} {share}%" for name, _, share in p["threads"]))  # fmt: skip
        lines.append("    self time by package: " + ", ".join(
            f"{name} {share}%" for name, _, share in p["self_by_package"][:8]))  # fmt: skip
        lines.append("    charged to the innermost application frame:")
        for name, _, share in p["app_attributed"][:top]:
            lines.append(f"      {share:>5.1f}%  {name}")
        lines.append("    self time by function:")
        for name, _, share in p["self"][:top]:
            lines.append(f"      {share:>5.1f}%  {name}")
    return lines


# --- charts -------------------------------------------------------------------------------------

COLOURS = {"chat": "#1f77b4", "raw": "#7f7f7f", "chat-cluster": "#ff7f0e"}


def charts(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNGs of the run: S2 p99 latency against the offered rate, and S4 clients of the killed
    instance resumed over time after the SIGKILL, each target in one chart. Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    targets = results.get("targets", {})

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    drawn = False
    for name, t in targets.items():
        steps = _get(t, "fanout", "s2", "steps", default=[]) or []
        points = sorted((s["rate"], s["latency_all"]["p99_ms"]) for s in steps if s.get("latency_all"))
        if not points:
            continue
        drawn = True
        ax.plot(*zip(*points, strict=True), marker="o", label=name, color=COLOURS.get(name))
        for rate, p99, ok in sorted((s["rate"], s["latency_all"]["p99_ms"], s["ok"]) for s in steps):
            if not ok:
                ax.plot([rate], [p99], marker="x", color="red", markersize=9)
    if drawn:
        ax.axhline(P99_LIMIT_MS, color="red", linestyle=":", linewidth=1, label=f"p99 limit {P99_LIMIT_MS:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("messages sent per second (each to every receiver)")
        ax.set_ylabel("p99 delivery latency (ms)")
        ax.set_title("S2: p99 latency against rate (x = step failed)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out_dir / "s2_p99.png"
        fig.tight_layout()
        fig.savefig(path)
        written.append(path)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    drawn = False
    for name, t in targets.items():
        s4 = t.get("s4") or {}
        times = s4.get("resume_times_s")
        if not times:
            continue
        drawn = True
        xs = [0.0, *sorted(times)]
        ys = list(range(len(xs)))
        ax.step(xs, ys, where="post", label=f"{name} ({len(times)}/{s4.get('on_killed_instance')})",
                color=COLOURS.get(name))  # fmt: skip
    if drawn:
        ax.set_xlabel("seconds after the SIGKILL")
        ax.set_ylabel("clients of the killed instance resumed")
        ax.set_title("S4: clients resumed after an instance was killed")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out_dir / "s4_resumed.png"
        fig.tight_layout()
        fig.savefig(path)
        written.append(path)
    plt.close(fig)
    return written
