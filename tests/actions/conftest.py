"""The personas and factories of tests/pages (roles, health history), shared here."""

from tests.pages.conftest import (  # noqa: F401
    fast_passwords,
    operator,
    operator_client,
    stranger,
    viewer,
    viewer_client,
)
