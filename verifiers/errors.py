"""The verifiers' own error: a verifier that cannot be built as asked (a missing facts file, a missing
model wheel). The engine turns it into its user-facing error where it builds verifiers, so that
`verifiers/` depends on nothing of the engine's."""


class VerifierError(ValueError):
    """A verifier's options or inputs are unusable; the message names the file or option."""
