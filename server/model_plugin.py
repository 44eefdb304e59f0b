"""vLLM general plugin (`vllm.general_plugins`): registers audiotext's Qwen2-Audio model class.

vLLM loads it in every process when `VLLM_PLUGINS` names `audiotext_model`, which the
launcher does unless `--stock` is given. Registration is lazy (a `module:Class` string),
so loading the plugin imports no model code.
"""

ARCHITECTURE = "Qwen2AudioForConditionalGeneration"


def register() -> None:
    """Serve Qwen2-Audio checkpoints with `audiotext.server.qwen2_audio`."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, f"audiotext.server.qwen2_audio:{ARCHITECTURE}")
