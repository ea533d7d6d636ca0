from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="web-index"),
    path("sign-out/", views.sign_out, name="web-sign-out"),
]
