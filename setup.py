"""Map the architecture folders into the ``synthkiln`` namespace.

The repository root mirrors the architecture (``engine/``, ``kernels/``, ``verifiers/``); the import
names live under ``synthkiln`` so they never collide with unrelated PyPI packages of the same names.
"""

from setuptools import setup

ENGINE_ROLES = ("corpus", "output", "stages", "teachers")  # engine/'s sub-packages, one per role

setup(
    packages=[
        "synthkiln.engine",
        *(f"synthkiln.engine.{role}" for role in ENGINE_ROLES),
        "synthkiln.kernels",
        "synthkiln.verifiers",
    ],
    package_dir={
        "synthkiln.engine": "engine",
        **{f"synthkiln.engine.{role}": f"engine/{role}" for role in ENGINE_ROLES},
        "synthkiln.kernels": "kernels",
        "synthkiln.verifiers": "verifiers",
    },
    package_data={"synthkiln.engine": ["templates/*.jinja"]},
)
