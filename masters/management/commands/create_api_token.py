"""Issue an API token for a bot: ``manage.py create_api_token NAME [--operator]``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from masters.models import ApiToken

NAME_MAX = ApiToken._meta.get_field("name").max_length


class Command(BaseCommand):
    help = (
        "Create an API token and print it alone on stdout (scripts capture it). "
        "Only its hash is stored: it cannot be shown again."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="Who uses the token, e.g. the bot's name (unique).")
        parser.add_argument(
            "--operator",
            action="store_true",
            help="Also allow operator actions (failover, rollback) through the API.",
        )

    def handle(self, *args, name: str, operator: bool, **options) -> None:
        name = name.strip()
        if not name or len(name) > NAME_MAX:
            raise CommandError(f"name: must be 1 to {NAME_MAX} characters")
        if ApiToken.objects.filter(name=name).exists():
            raise CommandError(f"a token named {name!r} exists; pick another name")
        _, token = ApiToken.issue(name, can_operate=operator)
        self.stdout.write(token)
