"""audiotext's client SDK (light: no vLLM, no torch)."""
