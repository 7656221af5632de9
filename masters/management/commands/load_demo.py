from __future__ import annotations

from django.core.management.base import BaseCommand

from masters.config import import_bots_config
from masters.demo import demo_bots_config, ensure_demo_admin


class Command(BaseCommand):
    help = "Load the demo: three masters on the gateway simulator, and an admin user."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--simulator-url", default="http://127.0.0.1:3000")

    def handle(self, *args, simulator_url: str, **options) -> None:
        result = import_bots_config(demo_bots_config(simulator_url))
        self.stdout.write(
            f"Demo masters on {simulator_url}: {', '.join(result.created + result.updated)}"
        )
        username, password = ensure_demo_admin()
        shown = password or "(unchanged; reset with: manage.py changepassword admin)"
        self.stdout.write(f"Log in as {username} / {shown}")
