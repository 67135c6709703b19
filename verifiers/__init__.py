"""Sandboxed verification: the isolation (`sandbox`), the worker pool (`pool`), the verifiers that run
code and maths (`checks`) and those that ask models (`judges`), final-answer extraction (`answers`).
Nothing here imports the engine: it passes in what the verifiers need (a judge's `generate` callable)
and turns `VerifierError` into its own error."""

from synthkiln.verifiers.checks import CHECKS, Verdict, Verifier
from synthkiln.verifiers.errors import VerifierError
from synthkiln.verifiers.judges import Judge, KnowledgeBase, RewardModel
from synthkiln.verifiers.pool import VerifierPool
from synthkiln.verifiers.sandbox import Limits, Sandbox, SandboxUnavailable

VERIFIERS: dict[str, type[Verifier]] = {**CHECKS, **{v.name: v for v in (Judge, RewardModel, KnowledgeBase)}}

__all__ = ["VERIFIERS", "Judge", "KnowledgeBase", "Limits", "RewardModel", "Sandbox", "SandboxUnavailable",
           "Verdict", "Verifier", "VerifierError", "VerifierPool"]  # fmt: skip
