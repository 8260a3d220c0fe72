from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from dashboard import views

urlpatterns = [
    path("", views.index, name="index"),
    path("poll/", views.grid_poll, name="grid-poll"),
    path("instances/<int:pk>/", views.instance_detail, name="instance-detail"),
    path("instances/<int:pk>/poll/", views.instance_poll, name="instance-poll"),
    path("instances/<int:pk>/capture/", views.capture_now, name="capture-now"),
    path("instances/<int:pk>/console/", views.console_output, name="console-output"),
    re_path(r"^captures/(?P<pk>[0-9]+)/(?P<sha256>[0-9a-f]{64})/thumb\.jpg$", views.capture_image,
            {"variant": "thumb"}, name="capture-thumb"),
    re_path(r"^captures/(?P<pk>[0-9]+)/(?P<sha256>[0-9a-f]{64})/full$", views.capture_image,
            {"variant": "full"}, name="capture-full"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("health/", views.health, name="health"),
    path("admin/", admin.site.urls),
]
