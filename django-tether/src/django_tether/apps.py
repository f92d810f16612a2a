from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_delete, post_save, pre_save
from django.utils.module_loading import autodiscover_modules


class TetherConfig(AppConfig):
    name = "django_tether"
    verbose_name = "Tether"
    default_auto_field = "django.db.models.AutoField"

    def ready(self):
        from . import checks, conf, revocation  # noqa: F401 (checks register themselves)

        user_model = settings.AUTH_USER_MODEL
        pre_save.connect(revocation.user_pre_save, sender=user_model, dispatch_uid="django_tether.pre_save")
        post_save.connect(revocation.user_post_save, sender=user_model, dispatch_uid="django_tether.post_save")
        post_delete.connect(revocation.user_post_delete, sender=user_model, dispatch_uid="django_tether.post_delete")
        if conf.get("AUTODISCOVER"):
            autodiscover()


def autodiscover():
    """Imports every installed app's ``tether`` module, as the admin does with ``admin``."""
    autodiscover_modules("tether")
