"""audiotext's server side: the `audiotext` command, the vLLM launcher, built-in checkpoints
and the vLLM plugins. Nothing here imports vLLM at import time."""
