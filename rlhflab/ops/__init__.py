"""Pure tensor functions (torch only, no I/O)."""
