//! Path resolution beneath a root directory (openat2 with RESOLVE_IN_ROOT).
