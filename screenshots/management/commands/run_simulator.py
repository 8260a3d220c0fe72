"""manage.py run_simulator --config fleet.json: serve the ECS simulator until SIGTERM or SIGINT.

Deliberately free of models and the database: the simulator stands in for Alibaba Cloud, not for us.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from argparse import ArgumentParser
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from screenshots.simulator import start_in_thread
from screenshots.simulator.fleet import FleetState


class Command(BaseCommand):
    help = "Serve the ECS API simulator (the demo fleet and the tests talk to it over HTTP)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--config", required=True, help="JSON file: access keys, regions, instances, knobs."
        )
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8900, help="0 picks a free port.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with open(options["config"], encoding="utf-8") as config_file:
                state = FleetState(json.load(config_file))
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot load the simulator config: {exc}") from exc
        _ensure_request_log()

        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            simulator = start_in_thread(state, options["host"], options["port"])
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc}") from exc
        try:
            instances = len(state.instances())
            self.stdout.write(f"ECS simulator listening on {simulator.url} ({instances} instances)")
            self.stdout.flush()
            # A timed wait keeps the main thread responsive to signals on every platform.
            while not stop.wait(1.0):
                pass
        finally:
            simulator.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("ECS simulator stopped")


def _ensure_request_log() -> None:
    # One INFO line per request is the point of running this in a terminal; the project's LOGGING may
    # not route this logger anywhere, so give it a handler of its own in that case.
    logger = logging.getLogger("screenshots.simulator")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
