"""Sandboxed verification: the isolation (`sandbox`), the worker pool (`pool`) and the verifiers (`checks`)."""

from synthkiln.verifiers.checks import VERIFIERS, Verdict, Verifier
from synthkiln.verifiers.pool import VerifierPool
from synthkiln.verifiers.sandbox import Limits, Sandbox, SandboxUnavailable

__all__ = ["VERIFIERS", "Limits", "Sandbox", "SandboxUnavailable", "Verdict", "Verifier", "VerifierPool"]
