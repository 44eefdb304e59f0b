"""vLLM general plugin (`vllm.general_plugins`): audiotext's model, connector and renderer.

vLLM loads it in every process (API servers, engine cores, offline `LLM`) when
`VLLM_PLUGINS` names `audiotext_model`, which the launcher does unless `--stock` is given.
It registers:
- audiotext's Qwen2-Audio (`qwen2_audio`: long audio heard whole, padding-free encoder),
  lazily, as a `module:Class` string;
- the media connector `audiotext` (`connector`), which the launcher selects with
  `VLLM_MEDIA_CONNECTOR`: every route's audio comes in through it;
- the renderer for Hugging Face tokenizers (`renderer`), which refuses control tokens in
  user text once the API server turns that on.
"""

ARCHITECTURE = "Qwen2AudioForConditionalGeneration"
# vLLM picks a renderer by tokenizer mode; Qwen2-Audio checkpoints use Hugging Face's.
RENDERER_MODE = "hf"


def register() -> None:
    """Register audiotext's model class, media connector and renderer with vLLM."""
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY

    import audiotext.server.connector  # noqa: F401 (registers itself with vLLM)

    ModelRegistry.register_model(ARCHITECTURE, f"audiotext.server.qwen2_audio:{ARCHITECTURE}")
    RENDERER_REGISTRY.register(RENDERER_MODE, "audiotext.server.renderer", "GuardedHfRenderer")
