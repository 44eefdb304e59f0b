"""audiotext's benchmark harness."""
