"""The operator actions' forms: what a confirmation page posts back."""

from __future__ import annotations

from django import forms

from masters.models import Master

ON, OFF = "on", "off"


class FailoverForm(forms.Form):
    """A manual failover: the backup (blank: chosen as automatic failover would) and why."""

    backup = forms.ModelChoiceField(
        queryset=Master.objects.none(),
        required=False,
        to_field_name="external_id",
        empty_label="Choose automatically",
    )
    reason = forms.CharField(max_length=500, required=False)

    def __init__(self, *args, master: Master, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["backup"].queryset = Master.objects.exclude(pk=master.pk).order_by(
            "failover_priority", "external_id"
        )


class MaintenanceForm(forms.Form):
    """Maintenance on or off; when turning it on, optionally drain the master to a backup."""

    state = forms.ChoiceField(choices=[(ON, "Start maintenance"), (OFF, "End maintenance")])
    reason = forms.CharField(max_length=500, required=False)
    drain = forms.BooleanField(
        required=False,
        help_text="Let in-flight sends finish, then move the master's pending messages "
        "and conversations to a backup.",
    )
