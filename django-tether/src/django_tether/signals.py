"""Signals fed by the server's session events (docs/DJANGO.md section 1.4).

Both are sent with ``sender`` = the user model and these keyword arguments:

``user``
    The Django user, or None if the row no longer exists.
``username``, ``user_id``
    As the server logged the user in.
``session_id``
    The server's session id (as ``django_tether.sessions()`` lists it).
``peer``
    The device's address, ``ip:port``.
``at``
    When it happened on the server (an aware datetime, UTC).
``request``
    The forwarded HTTP request.

``device_disconnected`` also has ``reason``: ``normal``, ``closed``,
``idle_timeout``, ``kicked``, ``replaced``, ``revoked``, ``shutdown``,
``protocol_error`` or ``io_error``.

Events are delivered at least once and in order per session; a receiver that
raises makes the server deliver the event again later (its database writes
are rolled back), and an event already handled is never sent to receivers twice.
"""

from django.dispatch import Signal

device_connected = Signal()
device_disconnected = Signal()
