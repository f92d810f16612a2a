"""Exceptions: what call()/sessions() raise, and what handlers raise to answer a device with an error."""

__all__ = [
    "ApplicationError",
    "BadArguments",
    "DeviceError",
    "DeviceOffline",
    "DeviceTimeout",
    "TetherError",
    "TetherRequestError",
    "TetherUnavailable",
]


# --- calling devices through the admin API ---------------------------------


class TetherError(Exception):
    """Base class of everything call(), sessions(), disconnect() and revoke() raise."""

    def __init__(self, message, *, status=None, body=None):
        super().__init__(message)
        self.message = message
        #: HTTP status of the admin API's answer, if there was one.
        self.status = status
        #: The admin API's JSON error body, if there was one.
        self.body = body or {}


class DeviceOffline(TetherError):
    """The user has no live session (or not the one asked for), or it ended during the call."""


class DeviceError(TetherError):
    """The device answered the call with an error.

    ``code`` is the protocol's error code (1 unknown_method, 2 bad_arguments,
    3 failed, 4 timeout, 5 shutting_down, 6 forbidden, 7 busy; 1000 and up
    are the application's), ``code_name`` its name, ``message`` the device's text.
    """

    def __init__(self, message, *, code, code_name=None, status=None, body=None):
        super().__init__(message, status=status, body=body)
        self.code = code
        self.code_name = code_name

    def __str__(self):
        name = " %s" % self.code_name if self.code_name else ""
        return "device error %s%s: %s" % (self.code, name, self.message)


class DeviceTimeout(DeviceError):
    """The device did not answer within the timeout (code 4, timeout)."""

    def __init__(self, message, *, status=None, body=None):
        super().__init__(message, code=4, code_name="timeout", status=status, body=body)


class TetherUnavailable(TetherError):
    """The admin API cannot be reached, refused the token, or is shutting down.

    Also raised when TETHER["ADMIN_URL"] is not configured.
    """


class TetherRequestError(TetherError, ValueError):
    """The admin API refused the request itself (bad arguments, too large for the device's frame)."""


# --- raised by handlers -----------------------------------------------------


class BadArguments(Exception):
    """Raise in a handler: the device gets Error(BAD_ARGUMENTS = 2) with this message."""


class ApplicationError(Exception):
    """Raise in a handler: the device gets Error(code) with this message (code >= 1000)."""

    def __init__(self, code, message=""):
        if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 0xFFFF:
            raise ValueError("an application error code is an int in 1000..=65535, got %r" % (code,))
        super().__init__(message)
        self.code = code
        self.message = message
