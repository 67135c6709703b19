"""Sandboxed verifier pool and verifiers (see DESIGN.md, "Verifiers and the sandbox")."""
