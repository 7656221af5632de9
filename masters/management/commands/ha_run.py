"""Run the whole product in the foreground, the way `make run` does.

Prepares the database (migrate, static files, demo data or BOTS_CONFIG), then
starts every process kind as a child: web (daphne), worker (django-q2 cluster),
prober, dispatcher and, for the demo, the gateway simulator. One child dying stops them all, and
Ctrl-C (or SIGTERM) stops them all cleanly: nothing is left running behind.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from masters.demo import DEMO_SESSIONS

STOP_GRACE_SECONDS = 10


class Command(BaseCommand):
    help = "Migrate, load the demo (or BOTS_CONFIG) and run web, worker and simulator."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--simulator-port", type=int, default=int(os.environ.get("SIMULATOR_PORT", "3000"))
        )
        parser.add_argument("--bots-config", default=os.environ.get("BOTS_CONFIG", ""))

    def handle(self, *args, port: int, simulator_port: int, bots_config: str, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("setup_schedules", stdout=io.StringIO())
        self.stdout.write("Database migrated, static files collected, schedules set.")
        if bots_config:
            if not Path(bots_config).is_file():
                raise CommandError(f"BOTS_CONFIG: no such file: {bots_config}")
            call_command("import_bots_config", bots_config, stdout=self.stdout)
        else:
            simulator_url = f"http://127.0.0.1:{simulator_port}"
            call_command("load_demo", simulator_url=simulator_url, stdout=self.stdout)
        commands = self.process_commands(port, simulator_port, with_simulator=not bots_config)
        self.stdout.write(f"HA Portal: http://127.0.0.1:{port}/  (Ctrl-C stops everything)")
        sys.exit(supervise(commands, self.stdout))

    def process_commands(
        self, port: int, simulator_port: int, *, with_simulator: bool
    ) -> dict[str, list[str]]:
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        commands = {
            "web": [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "ha_portal.asgi:application",
            ],
            "worker": [*manage, "qcluster"],
            "prober": [*manage, "ha_prober"],
            "dispatcher": [*manage, "ha_dispatcher"],
        }
        if with_simulator:
            commands["simulator"] = [
                *manage,
                "ha_simulator",
                "--port",
                str(simulator_port),
                "--sessions",
                ",".join(DEMO_SESSIONS),
            ]
        return commands


def supervise(commands: dict[str, list[str]], out) -> int:
    """Start each command; return when one exits or on SIGINT/SIGTERM, stopping all."""
    stopping = False

    def request_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # Each child gets its own process group, so Ctrl-C reaches only us and we
    # stop the children in order instead of all at once mid-write.
    children = {
        name: subprocess.Popen(command, start_new_session=True)
        for name, command in commands.items()
    }
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                out.write(f"{name} exited with code {child.returncode}; stopping everything.")
                exit_code = child.returncode or 1
                stopping = True
                break
        else:
            time.sleep(0.2)
    stop_all(children)
    return exit_code


def stop_all(children: dict[str, subprocess.Popen]) -> None:
    """SIGTERM every child, then SIGKILL the process group of any that outlives the grace.

    Only the child itself gets SIGTERM: django-q2's cluster stops its own
    workers in order, and signalling them directly makes it wait for the grace.
    """
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children.values():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
