from django.apps import AppConfig


class ThermostatsConfig(AppConfig):
    name = "thermostats"
