"""The one exception type for mistakes a user can fix.

Everything a user can cause (a bad flag, a missing folder, a corrupt image, a file that is not a
checkpoint) is raised as `UserError` with one line that names the flag or file and says what to do.
`cli.main` prints it as `error: <message>` and exits with status 2, never with a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, with a one-line message that names the fix."""
