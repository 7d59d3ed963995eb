#!/usr/bin/env python3
"""Docker HEALTHCHECK: exit 0 when naiad's readiness endpoint answers 200, 1 otherwise (no curl in slim images)."""

import os
import sys
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/v2/health/ready"


def main() -> int:
    """Ask the URL in NAIAD_HEALTHCHECK_URL (or the argument); 0 on HTTP 200."""
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NAIAD_HEALTHCHECK_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except Exception as error:  # HTTPError (503 while loading), refused connection, timeout: all unhealthy
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
