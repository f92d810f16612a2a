"""What the end-to-end tests do to the database through Django's ORM:

  manage.py forwardtest adduser NAME PASSWORD   (with devices.connect)
  manage.py forwardtest deactivate NAME
  manage.py forwardtest set-password NAME PASSWORD
  manage.py forwardtest remove-perm NAME
  manage.py forwardtest deliveries              (JSON lines, arrival order)
"""
import json

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand

from devices.models import Delivery


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("action")
        parser.add_argument("args", nargs="*")

    def handle(self, *args, **options):
        action = options["action"]  # Django passes the "args" list as *args
        User = get_user_model()
        connect = Permission.objects.get(content_type__app_label="devices", codename="connect")
        if action == "adduser":
            name, password = args
            user = User.objects.create_user(name, password=password)
            user.user_permissions.add(connect)
        elif action == "deactivate":
            user = User.objects.get(username=args[0])
            user.is_active = False
            user.save()
        elif action == "set-password":
            user = User.objects.get(username=args[0])
            user.set_password(args[1])
            user.save()
        elif action == "remove-perm":
            User.objects.get(username=args[0]).user_permissions.remove(connect)
        elif action == "deliveries":
            for d in Delivery.objects.order_by("id"):
                body = bytes(d.body)
                line = {
                    "kind": d.kind,
                    "name": d.name,
                    "session": d.session,
                    "user_id": d.user_id,
                    "request_id": d.request_id,
                    "body": json.loads(body) if d.kind == "event" else body.hex(),
                }
                self.stdout.write(json.dumps(line))
        else:
            raise SystemExit(f"unknown action {action}")
