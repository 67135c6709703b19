"""Sandboxed verification: the isolation (`sandbox`), the worker pool (`pool`), the verifiers that run
code and maths (`checks`) and those that ask models (`judges`)."""

from synthkiln.verifiers.checks import CHECKS, Verdict, Verifier
from synthkiln.verifiers.judges import Judge, KnowledgeBase, RewardModel
from synthkiln.verifiers.pool import VerifierPool
from synthkiln.verifiers.sandbox import Limits, Sandbox, SandboxUnavailable

VERIFIERS: dict[str, type[Verifier]] = {**CHECKS, **{v.name: v for v in (Judge, RewardModel, KnowledgeBase)}}

__all__ = ["VERIFIERS", "Judge", "KnowledgeBase", "Limits", "RewardModel", "Sandbox", "SandboxUnavailable",
           "Verdict", "Verifier", "VerifierPool"]  # fmt: skip
