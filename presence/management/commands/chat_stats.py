"""Cluster load at a glance: instances, connections, users online."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from presence import selectors

from ._cluster import from_registry, require_cluster


class Command(BaseCommand):
    help = "Instances (heartbeat age, alive or dead, connections), total connections and users online."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="One JSON object instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        require_cluster()
        instances = from_registry(selectors.instances)
        cluster = from_registry(selectors.cluster_connections)
        stats = {
            "instances": sorted(instances, key=lambda i: i["instance_id"]),
            "connections": cluster["total"],
            "users_online": cluster["users_online"],
        }
        if options["json"]:
            self.stdout.write(json.dumps(stats, indent=2))
            return
        rows = [("INSTANCE", "STATE", "HEARTBEAT AGE", "CONNECTIONS")] + [
            (i["instance_id"], "alive" if i["alive"] else "dead", f"{i['heartbeat_age_s']:.1f}s", str(i["connections"]))
            for i in stats["instances"]
        ]
        widths = [max(len(row[col]) for row in rows) for col in range(4)]
        for row in rows:
            self.stdout.write(
                f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
            )
        alive = sum(1 for i in instances if i["alive"])
        self.stdout.write(
            f"\n{len(instances)} instance(s) ({alive} alive), {stats['connections']} connection(s), "
            f"{stats['users_online']} user(s) online"
        )
