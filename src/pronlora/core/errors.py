"""Error types whose message names the file, utterance, line or key at fault.

Entry points turn these into exit status 2 with the message and no traceback; anything else is
a bug and keeps its traceback. The subclass says which kind of input was wrong.
"""

from __future__ import annotations


class InputError(Exception):
    """Something the user supplied or set up is wrong; the message says what and where."""


class ConfigError(InputError, ValueError):
    """A config, experiment or override names a bad key or value."""


class DataError(InputError):
    """A corpus, prepared dir, predictions shard or run dir holds bad or missing data."""


class SnapshotError(InputError):
    """A model snapshot is in a format or state the loader cannot use."""


class EnvironmentProblem(InputError):
    """A dependency, device or cluster setting the job needs is missing."""
