"""The live replica of a Serve application, found through Ray's state API, run as a child
process so that the pytest process never connects to Ray:

    python -m tests.runtime.serve.replicas pid GCS_ADDRESS APP    # prints its pid
    python -m tests.runtime.serve.replicas kill GCS_ADDRESS APP   # SIGKILL, prints its pid
"""

from __future__ import annotations

import os
import signal
import sys

from ray.util.state import list_actors

from runtime.serve.app import DEPLOYMENT_NAME


def replica_pid(address: str, app: str) -> int:
    """The pid of the one live replica of ``app`` (Serve names its actor class
    ``ServeReplica:APP:DEPLOYMENT``)."""
    actors = list_actors(
        address=address,
        filters=[("class_name", "=", f"ServeReplica:{app}:{DEPLOYMENT_NAME}"),
                 ("state", "=", "ALIVE")],
    )  # fmt: skip
    if len(actors) != 1:
        raise SystemExit(f"expected one live replica of {app}, found {len(actors)}")
    return int(actors[0].pid)


def main(argv: list[str]) -> None:
    action, address, app = argv
    pid = replica_pid(address, app)
    if action == "kill":
        os.kill(pid, signal.SIGKILL)
    print(pid)


if __name__ == "__main__":
    main(sys.argv[1:])
