"""Pure compute on arrays: shingle hashing, MinHash, LSH, n-gram indexes (see DESIGN.md, "Kernels").

Two Numba defaults are set here, before any kernel module imports numba (which reads them once);
a user's own NUMBA_CACHE_DIR or NUMBA_CPU_FEATURES wins:

- compiled kernels are cached in one fixed place, so only the first process on a machine compiles;
- on CPUs with AVX-512, LLVM is allowed 512-bit vectors. It keeps to 256 bits on Intel by default
  (a tuning flag from CPUs that slowed down under 512-bit code); the MinHash permutation loop is
  vector-bound, and text-to-signature runs ~12% faster with it here (benchmarks/README.md).
"""

import os
from pathlib import Path

os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    str(Path(os.environ.get("SYNTHKILN_CACHE_DIR") or Path.home() / ".cache" / "synthkiln") / "numba"),
)
if "NUMBA_CPU_FEATURES" not in os.environ:
    import llvmlite.binding

    _features = llvmlite.binding.get_host_cpu_features()
    if _features.get("avx512f"):
        os.environ["NUMBA_CPU_FEATURES"] = _features.flatten() + ",-prefer-256-bit"
