"""Small shared helpers (image I/O, devices)."""
