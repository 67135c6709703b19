"""Pure compute on arrays: shingle hashing, MinHash, LSH, n-gram indexes (see DESIGN.md, "Kernels")."""
