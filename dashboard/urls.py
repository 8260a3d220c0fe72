from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from dashboard import views, walls

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
    path("wall/<slug:slug>/", walls.wall, name="wall"),
    path("wall/<slug:slug>/poll/", walls.wall_poll, name="wall-poll"),
    re_path(r"^wall/(?P<slug>[-a-zA-Z0-9_]+)/captures/(?P<pk>[0-9]+)/(?P<sha256>[0-9a-f]{64})/thumb\.jpg$",
            walls.wall_capture, name="wall-capture"),
    path("display/<str:token>/", walls.display_enter, name="display-enter"),
    path("s/<str:token>/", walls.share_page, name="share"),
    path("s/<str:token>/poll/", walls.share_poll, name="share-poll"),
    re_path(r"^s/(?P<token>[^/]+)/captures/(?P<pk>[0-9]+)/(?P<sha256>[0-9a-f]{64})/(?P<variant>thumb|full)$",
            walls.share_capture, name="share-capture"),
    path("shares/", walls.share_links, name="share-links"),
    path("shares/<int:pk>/revoke/", walls.revoke_share_link, name="share-revoke"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("health/", views.health, name="health"),
    path("health/pipeline/", views.pipeline_health, name="health-pipeline"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    path("admin/", admin.site.urls),
]
