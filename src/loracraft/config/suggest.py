"""'Did you mean' suggestions for misspelt flags and keys."""

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    """' (did you mean --network_alpha?)' or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{matches[0]}?)" if matches else ""
