"""Errors a user can act on. The CLI prints them without a traceback and exits non-zero."""


class SynthkilnError(Exception):
    """Base class: the message names the file, row or field at fault and what to do."""


class RecipeError(SynthkilnError):
    """A recipe file or a ``--set`` override is invalid."""


class SeedsError(SynthkilnError):
    """The seeds cannot be read at all (a single bad row is quarantined instead)."""


class TeacherError(SynthkilnError):
    """A teacher cannot be loaded or reached."""


class OutputError(SynthkilnError):
    """The output directory cannot be used as asked (e.g. it holds another recipe's run)."""
