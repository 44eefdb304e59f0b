"""vLLM general plugin (`vllm.general_plugins`): audiotext's model, connector and renderer.

vLLM loads it in every process (API servers, engine cores, offline `LLM`) when
`VLLM_PLUGINS` names `audiotext_model`, which the launcher does unless `--stock` is given.
It registers:
- audiotext's Qwen2-Audio (`qwen2_audio`: long audio heard whole, padding-free encoder),
  as the class itself: vLLM inspects a class registered lazily (`module:Class`) in a
  subprocess, a further import of vLLM (12 s on this project's CPUs), whenever its
  model-info cache misses, i.e. on the first start after every change of the module;
  importing the class here costs 0.25 s in a process that has vLLM loaded, and imports
  nothing that touches CUDA;
- the media connector `audiotext` (`connector`), which the launcher selects with
  `VLLM_MEDIA_CONNECTOR`: every route's audio comes in through it;
- the renderer for Hugging Face tokenizers (`renderer`), which refuses control tokens in
  user text once the API server turns that on.
On CPU it also keeps the start method the launcher chose for the engine core process
(`engine_start.keep_start_method`).
"""

from audiotext.server import engine_start

ARCHITECTURE = "Qwen2AudioForConditionalGeneration"
# vLLM picks a renderer by tokenizer mode; Qwen2-Audio checkpoints use Hugging Face's.
RENDERER_MODE = "hf"


def register() -> None:
    """Register audiotext's model class, media connector and renderer with vLLM."""
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY

    import audiotext.server.connector  # noqa: F401 (registers itself with vLLM)
    from audiotext.server.qwen2_audio import Qwen2AudioForConditionalGeneration

    ModelRegistry.register_model(ARCHITECTURE, Qwen2AudioForConditionalGeneration)
    RENDERER_REGISTRY.register(RENDERER_MODE, "audiotext.server.renderer", "GuardedHfRenderer")
    engine_start.keep_start_method()
