"""Container health check: GET /api/health/live on this container answers 200.

It sends a Host header from DJANGO_ALLOWED_HOSTS, since Django refuses other hosts with 400.
"""

import os
import sys
import urllib.request


def allowed_host() -> str:
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(","):
        host = host.strip().lstrip(".")
        if host and "*" not in host:
            return host
    return "localhost"


def main() -> int:
    request = urllib.request.Request("http://127.0.0.1:8000/api/health/live", headers={"Host": allowed_host()})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:  # noqa: S310 (a fixed http URL on this container)
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"health check failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
