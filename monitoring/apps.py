from django.apps import AppConfig
from django.db.models.signals import post_migrate


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        post_migrate.connect(_ensure_roles_once, dispatch_uid="monitoring.roles")


def _ensure_roles_once(sender, **kwargs) -> None:
    # post_migrate fires once per app; the monitoring app's signal comes after
    # the masters app's (INSTALLED_APPS order), so every permission exists.
    if sender.name == "monitoring":
        from monitoring.roles import ensure_roles

        ensure_roles()
