"""The three roles, as groups with permissions: viewer, operator, admin.

- viewer sees everything (the dashboard, master pages, reports);
- operator also acts: manual failover, rollback, maintenance, circuit
  breaker reset, acknowledging alerts (``monitoring.operate``);
- admin also edits masters, run-time settings, alert thresholds and alert
  recipients (the model permissions below; give the user ``is_staff`` too
  for the admin site).

The groups are brought up to date after every ``migrate`` (permissions exist
only once their models are migrated, so a data migration cannot do it). Views
check these permissions, never the group names.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"

OPERATE = "monitoring.operate"

VIEW = [
    "masters.view_master",
    "masters.view_event",
    "masters.view_failoverevent",
    "masters.view_healthcheck",
    "masters.view_message",
    "masters.view_runtimesettings",
    # Not the alert recipients: a webhook URL is often a credential (Slack's
    # are). Admins see them with the edit permissions below.
    "monitoring.view_alert",
    "monitoring.view_alertdelivery",
    "monitoring.view_alertsettings",
]
ACT = [OPERATE]
EDIT = [
    f"{app}.{action}_{model}"
    for app, model in [
        ("masters", "master"),
        ("masters", "alertrecipient"),
        ("masters", "runtimesettings"),
        ("monitoring", "alertsettings"),
    ]
    for action in ("add", "change", "delete")
]

ROLES: dict[str, list[str]] = {
    VIEWER: VIEW,
    OPERATOR: VIEW + ACT,
    ADMIN: VIEW + ACT + EDIT,
}


def permissions(names: list[str]) -> list[Permission]:
    """Look up "app.codename" permissions; a name that matches none is a bug here."""
    found = []
    for name in names:
        app_label, codename = name.split(".", 1)
        found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return found


def ensure_roles(**_kwargs) -> None:
    """Create the groups or set their permissions to exactly the role's (post_migrate)."""
    for role, names in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set(permissions(names))


def grant(user, role: str) -> None:
    """Put a user in one role (replacing any other of the three)."""
    user.groups.remove(*Group.objects.filter(name__in=ROLES))
    user.groups.add(Group.objects.get(name=role))
