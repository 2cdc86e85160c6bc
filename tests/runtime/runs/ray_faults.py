"""A Ray worker that dies once, as ``kill -9`` would: the ``worker_process_setup_hook`` the
Ray tests start Ray with (every worker process runs it at start).

When ``$OMAMA_TEST_DIE_ONCE`` names a file that exists, the first worker to predict an item
renames it to ``<file>.fired`` and exits at once (``os._exit(137)``); the others, and the
restarted worker, predict as usual. The runtime holds no fault-injection code.
"""

from __future__ import annotations

import os

ENV = "OMAMA_TEST_DIE_ONCE"


def install() -> None:
    marker = os.environ.get(ENV)
    if not marker:
        return
    from runtime.runs.dataset_jobs import ItemPredictor
    from tests.kill_instants import die

    original = ItemPredictor.predict

    def predict(self, item, images):
        try:
            os.rename(marker, f"{marker}.fired")  # atomic: only one worker ever wins it
        except FileNotFoundError:
            return original(self, item, images)
        die()

    ItemPredictor.predict = predict
