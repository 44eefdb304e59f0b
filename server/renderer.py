"""vLLM's renderer with one check on user text: no Qwen2-Audio control tokens.

Every route that builds a prompt (chat completions, completions, responses, Anthropic
messages, SageMaker invocations, tokenize, audiotext's routes) hands the user's messages
or prompt to vLLM's renderer before templating and tokenising. This renderer refuses any
of the model's control tokens there (`<|AUDIO|>`, `<|audio_bos|>`, `<|im_start|>`, ...),
in text or as token ids, so nobody forges an audio placeholder or a turn. The model plugin
registers it for Hugging Face tokenizers; the API server's endpoint plugin turns the check
on (offline `LLM.generate` builds its own prompts with those tokens, on purpose).

It also tells the server when vLLM begins to shut its engine client down, so that the
server can drain its own in-flight requests first (`on_shutdown`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any, cast

from vllm.renderers.hf import HfRenderer

from audiotext.server.errors import AudioRequestError, request_error

# Content-part fields that carry media, never text of the prompt.
MEDIA_PAYLOADS = frozenset({"input_audio", "audio_url", "image_url", "video_url"})
# Token-id prompts may arrive under these request fields.
TOKEN_PARAMETERS = ("kv_transfer_params.prompt_token_ids",)


class GuardedHfRenderer(HfRenderer):
    """`HfRenderer`, refusing control tokens in user input once `guard_user_text` is set."""

    guard_user_text = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_shutdown: list[Callable[[], None]] = []

    def render_messages(self, messages: Any, params: Any) -> Any:
        self._check_messages(messages, params)
        return super().render_messages(messages, params)

    async def render_messages_async(self, messages: Any, params: Any) -> Any:
        self._check_messages(messages, params)
        return await super().render_messages_async(messages, params)

    def render_prompts(self, prompts: Sequence[Any]) -> Any:
        self._check_prompts(prompts)
        return super().render_prompts(prompts)

    async def render_prompts_async(self, prompts: Sequence[Any]) -> Any:
        self._check_prompts(prompts)
        return await super().render_prompts_async(prompts)

    def validate_token_ids(self, token_ids: Sequence[int], *, parameter: str | None = None) -> None:
        if parameter in TOKEN_PARAMETERS:
            self._check_token_ids(token_ids, parameter)
        super().validate_token_ids(token_ids, parameter=parameter)

    def refuse_control_tokens(self, texts: Iterable[str], param: str) -> None:
        """Refuse text with a control token now, as rendering it later would (a realtime
        text turn is checked when it enters the conversation)."""
        if self.guard_user_text:
            self._check_strings(texts, param)

    def shutdown(self) -> None:
        for callback in self.on_shutdown:
            callback()
        super().shutdown()

    @cached_property
    def control_tokens(self) -> dict[str, int]:
        """The tokenizer's special tokens (text -> id): none may come from a user."""
        tokenizer = self.get_tokenizer()
        added = tokenizer.get_added_vocab()
        special = set(tokenizer.all_special_tokens) | {
            t for t in added if t.startswith("<|") and t.endswith("|>")
        }
        return {
            t: added[t] if t in added else cast(int, tokenizer.convert_tokens_to_ids(t))
            for t in special
        }

    def _check_messages(self, messages: Any, params: Any) -> None:
        if not self.guard_user_text:
            return
        self._check_strings(_strings(messages), "messages")
        kwargs = getattr(params, "chat_template_kwargs", None)
        if kwargs:
            self._check_strings(_strings(kwargs), "chat_template_kwargs")

    def _check_prompts(self, prompts: Sequence[Any]) -> None:
        if not self.guard_user_text:
            return
        for prompt in prompts:
            if isinstance(prompt, Mapping):
                if isinstance(prompt.get("prompt"), str):
                    self._check_strings([prompt["prompt"]], "prompt")
                if prompt.get("prompt_token_ids") is not None:
                    self._check_token_ids(prompt["prompt_token_ids"], "prompt")

    def _check_strings(self, strings: Iterable[str], param: str) -> None:
        tokens = self.control_tokens
        for text in strings:
            if "<|" not in text:
                continue
            for token in tokens:
                if token in text:
                    raise control_token_error(token, param)

    def _check_token_ids(self, token_ids: Iterable[int], param: str) -> None:
        by_id = {i: t for t, i in self.control_tokens.items()}
        for token_id in token_ids:
            if token_id in by_id:
                raise control_token_error(by_id[token_id], param)


def control_token_error(token: str, param: str) -> AudioRequestError:
    return request_error(
        f"the request contains the reserved token {token}; remove control tokens from text",
        param=param,
        reason="control_tokens",
    )


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON-like value (messages, parts, tool calls, ...) that can
    reach the prompt: media payloads (base64 audio, URLs) never do, and are skipped."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key not in MEDIA_PAYLOADS:
                yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif hasattr(value, "model_dump"):
        yield from _strings(value.model_dump())
