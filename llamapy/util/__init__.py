"""Small helpers every layer may use: atomic file writes, `-e` escapes, pausing the cyclic GC."""
