from django.apps import AppConfig


class MastersConfig(AppConfig):
    name = "masters"
    verbose_name = "Masters"

    def ready(self) -> None:
        from masters import lookups  # noqa: F401  (registers field__any)
