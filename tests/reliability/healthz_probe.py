"""GET /healthz on one keep-alive connection every 20 ms; print the latencies (seconds) as JSON.

Run as its own process by test_burst.py, so the burst's client never delays a measurement. Stops when its
stdin closes or after the deadline given, whichever comes first. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

EVERY_S = 0.02


def main(port: int, deadline_s: float) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + deadline_s
    print("ready", flush=True)
    while not stop.is_set() and time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                failures.append(f"/healthz answered {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"/healthz: {exc!r}")
            connection.close()
        stop.wait(EVERY_S)
    connection.close()
    print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
