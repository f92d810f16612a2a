import pytest
from django.core.exceptions import ImproperlyConfigured

import django_tether
from django_tether import codecs, postcard, registry


def test_autodiscovery_found_the_test_apps_handlers():
    assert {"report_temperature", "raw", "whoami_django", "temp/room 1"} <= set(registry.methods())
    assert set(registry.notifications()) == {"button"}
    handler = registry.get("method", "report_temperature")
    assert handler.codec is codecs.JSON
    assert handler.qualname == "tests.testapp.tether.report_temperature"


def test_a_name_taken_by_another_function_is_refused():
    with pytest.raises(registry.AlreadyRegistered, match="report_temperature"):

        @django_tether.method("report_temperature")
        def other(request, args):
            pass


def test_registering_the_same_function_again_is_fine():
    from tests.testapp import tether as handlers

    django_tether.method("raw")(handlers.raw)
    assert registry.get("method", "raw").func is handlers.raw


def test_handlers_must_take_request_and_args():
    with pytest.raises(ImproperlyConfigured, match=r"must take \(request, args\)"):

        @django_tether.method("bad")
        def bad(request):
            pass


def test_unknown_codecs_are_refused():
    with pytest.raises(ImproperlyConfigured, match="unknown codec 'xml'"):
        django_tether.method("m", codec="xml")
    with pytest.raises(ImproperlyConfigured, match="no decode_args"):
        django_tether.method("m", codec=object())
    assert codecs.resolve(postcard.ECHO) is postcard.ECHO


def test_empty_names_are_refused():
    with pytest.raises(ImproperlyConfigured, match="non-empty"):
        django_tether.notification("")(lambda request, args: None)
