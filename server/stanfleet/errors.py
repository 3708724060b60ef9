"""Errors shared by every command."""


class CommandError(Exception):
    """A problem the user can fix: printed as `stanfleet: message`, exit status 1."""
