"""Pure compute on arrays: shingle hashing, MinHash, LSH, n-gram indexes (see DESIGN.md, "Kernels")."""

import os
from pathlib import Path

# Numba caches compiled kernels in one fixed place, so only the first process on a machine pays for
# compilation. Set before any kernel module imports numba, which reads it once.
os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    str(Path(os.environ.get("SYNTHKILN_CACHE_DIR") or Path.home() / ".cache" / "synthkiln") / "numba"),
)
