"""Queries the ORM writes once per process, run afterwards with new parameters.

Building a query is most of what a small ORM lookup costs: on the connect path the token's user
took 660 us of CPU through ``QuerySet`` against 104 us for the same SQL through a cursor. A
``Prepared`` query is an ordinary queryset, built once per database with marker values in place
of its parameters; its SQL (the configured models' tables and columns, the backend's own
dialect) is kept, and each run passes the real values in the markers' places and converts the
rows with the compiler's own converters (so a UUID or a JSON column comes back as the ORM would
return it). Markers are matched by value: each must appear exactly once among the compiled
parameters, which ``Prepared`` checks when it compiles; a query it cannot prepare on a backend
(a marker the backend adapts, as SQLite turns a UUID into text) runs through the ORM there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.models import QuerySet

logger = logging.getLogger("core.prepared")


def _same(value: Any) -> Any:
    return value


class Prepared:
    def __init__(self, build: Callable[..., QuerySet[Any]], **markers: Any) -> None:
        self._build = build
        self._markers = markers
        # Per database alias: the compiled query, or None where it cannot be prepared (a marker
        # the backend's adaptation changed, as SQLite's text form of a UUID): the ORM runs then.
        self._compiled: dict[str, tuple[str, list[tuple[str, Callable[[Any], Any]]], Any, list[Any]] | None] = {}

    def prepared_for(self, alias: str = "default") -> bool:
        """Whether runs on ``alias`` skip the ORM (compiles on first use)."""
        return self._compile(alias) is not None

    def _compile(self, alias: str) -> tuple[str, list[tuple[str, Callable[[Any], Any]]], Any, list[Any]] | None:
        if alias in self._compiled:
            return self._compiled[alias]
        compiler = self._build(**self._markers).query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        order: list[tuple[str, Callable[[Any], Any]]] = []
        for param in params:
            # isinstance: the backend may wrap a value in a subclass (psycopg's Int8 for a
            # bigint), which each run then applies to its value too.
            names = [n for n, marker in self._markers.items() if isinstance(param, type(marker)) and param == marker]
            if len(names) != 1:
                logger.info("query not prepared: a parameter is not exactly one marker", extra={"param": repr(param)})
                self._compiled[alias] = None
                return None
            wrapped = type(param) is not type(self._markers[names[0]])
            order.append((names[0], type(param) if wrapped else _same))
        if sorted(name for name, _ in order) != sorted(self._markers):
            logger.info("query not prepared: a marker is not exactly once in its SQL")
            self._compiled[alias] = None
            return None
        fields = [s[0] for s in compiler.select[0 : compiler.col_count]]
        converters = compiler.get_converters(fields)
        compiled = self._compiled[alias] = (sql, order, compiler, converters)
        return compiled

    def rows(self, using: str = "default", **values: Any) -> list[tuple[Any, ...]]:
        compiled = self._compile(using)
        if compiled is None:
            return [tuple(row) for row in self._build(**values).using(using)]
        sql, order, compiler, converters = compiled
        with connections[using].cursor() as cursor:
            cursor.execute(sql, [adapt(values[name]) for name, adapt in order])
            rows: list[tuple[Any, ...]] = [tuple(row) for row in cursor.fetchall()]
        if converters:
            rows = [tuple(row) for row in compiler.apply_converters(rows, converters)]
        return rows
