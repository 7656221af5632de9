"""Admin forms: secrets are write-only."""

from __future__ import annotations

from django import forms

from masters.models import AlertRecipient, Master


class WriteOnlySecretsForm(forms.ModelForm):
    """Never render a stored secret; a blank field keeps it, a tick clears it.

    Subclasses name their secret fields in ``secret_fields`` and declare a
    ``clear_<field>`` BooleanField for each (the admin needs it declared).
    """

    secret_fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in self.secret_fields:
            has_secret = bool(self.instance.pk and getattr(self.instance, name))
            self.fields[name] = forms.CharField(
                required=False,
                label=self.fields[name].label,
                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
                help_text="Stored; leave blank to keep it." if has_secret else "Not set.",
            )

    def clean(self) -> dict:
        cleaned = super().clean()
        for name in self.secret_fields:
            if cleaned.pop(f"clear_{name}", False):
                cleaned[name] = ""
            elif not cleaned.get(name) and self.instance.pk:
                cleaned[name] = getattr(self.instance, name)
        return cleaned


class MasterAdminForm(WriteOnlySecretsForm):
    secret_fields = ("gateway_secret",)
    clear_gateway_secret = forms.BooleanField(required=False, label="Clear gateway secret")

    class Meta:
        model = Master
        fields = [
            "external_id",
            "display_name",
            "phone_number",
            "region",
            "role",
            "priority",
            "weight",
            "failover_priority",
            "is_active",
            "gateway_kind",
            "gateway_url",
            "gateway_session",
            "gateway_api_version",
            "gateway_secret",
            "max_messages_per_second",
            "max_recipients_per_day",
        ]


class AlertRecipientAdminForm(WriteOnlySecretsForm):
    secret_fields = ("secret",)
    clear_secret = forms.BooleanField(required=False, label="Clear secret")

    class Meta:
        model = AlertRecipient
        fields = [
            "kind",
            "email",
            "url",
            "secret",
            "format",
            "wants_critical",
            "wants_warning",
            "wants_info",
            "is_active",
        ]
