"""The three roles exist after migrate and carry exactly their permissions."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from monitoring.roles import ADMIN, OPERATE, OPERATOR, VIEWER, ensure_roles, grant

pytestmark = pytest.mark.django_db


def user_in(role: str):
    user = get_user_model().objects.create_user(role, password="correct horse battery")
    grant(user, role)
    return get_user_model().objects.get(pk=user.pk)  # fresh: no cached permissions


def test_a_viewer_sees_but_cannot_act_or_edit():
    viewer = user_in(VIEWER)
    assert viewer.has_perm("masters.view_master") and viewer.has_perm("monitoring.view_alert")
    assert not viewer.has_perm(OPERATE)
    assert not viewer.has_perm("masters.change_master")


def test_an_operator_acts_but_cannot_edit():
    operator = user_in(OPERATOR)
    assert operator.has_perm(OPERATE) and operator.has_perm("masters.view_master")
    assert not operator.has_perm("masters.change_master")
    assert not operator.has_perm("masters.change_alertrecipient")


def test_an_admin_edits_masters_settings_and_recipients():
    admin = user_in(ADMIN)
    for perm in [
        OPERATE,
        "masters.change_master",
        "masters.add_alertrecipient",
        "masters.change_runtimesettings",
        "monitoring.change_alertsettings",
    ]:
        assert admin.has_perm(perm), perm


def test_granting_a_role_replaces_the_previous_one_and_ensure_roles_is_idempotent():
    user = user_in(OPERATOR)
    grant(user, VIEWER)
    ensure_roles()
    user = get_user_model().objects.get(pk=user.pk)
    assert list(user.groups.values_list("name", flat=True)) == [VIEWER]
    assert not user.has_perm(OPERATE)
