from django.contrib.admin.views.decorators import staff_member_required
from django.http import JsonResponse

import django_tether
from django_tether import postcard


@staff_member_required
def device_info(request, username):
    """Django calls the device: GET /thermostats/<username>/info."""
    try:
        info = django_tether.call(username, "device_info", codec=postcard.DEVICE_INFO, timeout=5)
    except django_tether.DeviceOffline:
        return JsonResponse({"error": "%s has no device online" % username}, status=404)
    except django_tether.DeviceError as e:
        return JsonResponse({"error": "the device answered %s: %s" % (e.code, e.message)}, status=502)
    except django_tether.TetherUnavailable as e:
        return JsonResponse({"error": str(e)}, status=503)
    return JsonResponse(info)
