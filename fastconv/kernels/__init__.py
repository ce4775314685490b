"""numba kernels: pure loops over arrays the caller allocates. No validation happens here;
``fastconv.functional`` checks every argument before calling in."""
