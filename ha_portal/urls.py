from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from monitoring import views as monitoring_views

urlpatterns = [
    path("", monitoring_views.home, name="home"),
    path("masters/<slug:external_id>/qr.png", monitoring_views.master_qr, name="master-qr"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("monitoring.urls")),
    path("", include("masters.urls")),
]
