from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path
from django.views.generic import RedirectView

from monitoring import views as monitoring_views
from monitoring.pages.login import RateLimitedLoginView

urlpatterns = [
    path("", monitoring_views.home, name="home"),
    path("masters/<slug:external_id>/qr.png", monitoring_views.master_qr, name="master-qr"),
    # Issue 6: the rate-limited login; the admin's own login form sends people to it,
    # so no password is checked anywhere without the rate limit.
    path("login/", RateLimitedLoginView.as_view(), name="login"),
    path(
        "admin/login/",
        login_not_required(RedirectView.as_view(pattern_name="login", query_string=True)),
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("monitoring.urls")),
    path("", include("masters.urls")),
]
