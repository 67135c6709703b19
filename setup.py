"""Map the architecture folders into the ``synthkiln`` namespace.

The repository root mirrors the architecture (``engine/``, ``kernels/``, ``verifiers/``); the import
names live under ``synthkiln`` so they never collide with unrelated PyPI packages of the same names.
"""

from setuptools import setup

setup(
    packages=["synthkiln.engine", "synthkiln.engine.teachers", "synthkiln.kernels", "synthkiln.verifiers"],
    package_dir={
        "synthkiln.engine": "engine",
        "synthkiln.engine.teachers": "engine/teachers",
        "synthkiln.kernels": "kernels",
        "synthkiln.verifiers": "verifiers",
    },
    package_data={"synthkiln.engine": ["templates/*.jinja"]},
)
