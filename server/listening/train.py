"""Train the listening checkpoint: real Qwen2-Audio architecture, synthetic speech, CPU.

Two stages. First the audio side alone (encoder, projector and the output layer) learns to
spell English speech with a CTC loss on the projected audio embeddings: no language model
runs, so a step costs a fraction of a joint one, and the embeddings come to sit where the
model's output words live. Then the whole model learns the answers with its own next-token
loss, the CTC loss kept beside it (its blank head is training only and is not saved).
Clips are spoken once; every step draws a question for each clip afresh and masks a few
time and frequency bands (SpecAugment). Audio runs through the encoder unpadded, as
audiotext serves it (`features.trimmed_features`). Matrix products run in bfloat16
(autocast) where the recipe says so; the weights stay float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from audiotext.server import checkpoint
from audiotext.server.config import cpu_has_bfloat16
from audiotext.server.features import TAIL_FRAMES, trimmed_features
from audiotext.server.listening import cases
from audiotext.server.listening.score import edit_distance, score
from audiotext.server.listening.speech import render
from audiotext.server.windows import WINDOW_S

logger = logging.getLogger(__name__)

SIZE = checkpoint.Size(256, 3, 4, 1024, hidden=256, layers=3, heads=4, intermediate=768)
VOCAB_SIZE = 2048
FRAMES_PER_SECOND = 100  # the feature extractor's hop: 10 ms
MAX_FRAMES = int(WINDOW_S * FRAMES_PER_SECOND)  # one window
T = TypeVar("T")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights."""

    seed: int = 0
    clips: int = 12000
    # Stage 1: the audio side alone, CTC only.
    ctc_steps: int = 4000
    ctc_batch: int = 32
    ctc_lr: float = 3e-3
    # Stage 2: the whole model, answer loss plus `ctc_weight` x CTC.
    steps: int = 2000
    batch: int = 24
    lr: float = 1e-3
    warmup: int = 100
    ctc_weight: float = 0.5
    # Spell the voice's pitch class ("high"/"low", where a clip has one) before its words in
    # the CTC target, so the audio side keeps what the pitch questions ask about.
    ctc_pitch: bool = False
    # Up to this many seconds of silence before each clip (drawn uniformly per clip) in
    # `lead_share` of the steps on single clips, so speech is heard wherever in a window it
    # starts: a recording's later sentences and a served window's speech do not start at
    # once. A batch is padded to its longest clip, so such a step costs several plain ones.
    lead_silence: float = 0.0
    lead_share: float = 0.25
    eval_every: int = 500
    # Autocast matrix products to bfloat16; None: where the CPU computes in it natively
    # (AVX-512 BF16, AMX, Arm BF16). Elsewhere the autocast runs ~10x slower than float32.
    bf16: bool | None = None
    # Share of stage-2 steps that train on recordings of several sentences, each sample of
    # them heard as 1 to `long_windows` windows.
    long_share: float = 0.15
    long_frames: int = 12000  # mel frames per such batch
    long_windows: int = 2  # at most this many recordings heard as the windows of one clip
    # Sentences per recording, at least and at most (a served 30 s window holds 5-7); each
    # recording is cut to the sentences that fit in one 30 s window (`fit_window`).
    long_sentences: tuple[int, int] = cases.LONG_SENTENCES
    # Share of clips per question type (the rest of the types are drawn per step).
    mix: tuple[tuple[str, float], ...] = (
        ("transcribe", 0.52),
        ("long", 0.10),
        ("pitch", 0.08),
        ("chat", 0.14),
        ("language", 0.10),
        ("sound", 0.06),
    )
    # Weight of each question type when a clip's question is drawn (types left out weigh
    # 1). Empty: every (type, instruction) pair the clip can be asked is equally likely.
    task_weights: tuple[tuple[str, float], ...] = ()

    def spoken_key(self) -> str:
        """What decides the spoken clips (seed, count, mix, sentences per recording): their
        cache file's key (with the default sentence counts, the key the clips had before
        those could be chosen, so spoken caches stay valid)."""
        drawn: object = self.mix
        if self.long_sentences != cases.LONG_SENTENCES:
            drawn = (self.mix, self.long_sentences)
        mix = hashlib.sha256(repr(drawn).encode()).hexdigest()[:12]
        return f"{self.seed}-{self.clips}-{mix}"


def with_autocast_decided(recipe: Recipe) -> Recipe:
    """`recipe` with `bf16` decided: as given, else whether the CPU computes in bfloat16."""
    if recipe.bf16 is not None:
        return recipe
    return dataclasses.replace(recipe, bf16=cpu_has_bfloat16() is True)


@dataclass
class Example:
    """One spoken clip, featurised, with what it can be asked."""

    features: torch.Tensor  # (mel bins, frames), float16
    frames: int
    tasks: list[tuple[str, str | None, str]]
    transcript: str | None  # what the CTC loss spells: English speech only
    long: bool = False  # a recording of several sentences
    follows: tuple[str, int] | None = None  # a spoken follow-up (`cases.followed`)


@dataclass(frozen=True)
class HeldDialogue:
    """A held-out two-turn voice chat and its spoken turns."""

    dialogue: cases.Dialogue
    opener: Example
    follow_up: Example


def tokenizer_lines() -> list[str]:
    """Text the listening tokenizer is trained on: the base corpus and the grammar's world."""
    g = cases.grammar()
    rng = random.Random(0)
    lines = checkpoint.CORPUS.read_text(encoding="utf-8").splitlines()
    for split in ("train", "held_out"):
        for case in cases.cases(split, 3000, seed=1):
            lines += [case.answer, case.instruction or ""]
            lines.append(case.clip.text or "")
    for _ in range(3000):
        lines.append(cases.written(cases.english_sentence(rng, "train")[0]))
    for kind in g["instructions"].values():
        lines += kind * 20
    return lines


def speak_all(clips: Sequence[cases.Clip], extractor: Any, workers: int = 6) -> list[Example]:
    """Render and featurise clips (espeak-ng waits on I/O, so threads overlap it)."""

    def one(clip: cases.Clip) -> Example:
        clip, audio = fit_window(clip, extractor.n_samples)
        features, mask = trimmed_features(extractor, audio)
        english = clip.sound == "speech" and clip.language == "English"
        return Example(
            features=features.to(torch.float16),
            frames=int(mask.sum()),
            tasks=cases.tasks(clip),
            transcript=" ".join(cases.normalize(" ".join(clip.sentences))) if english else None,
            long=bool(clip.more),
            follows=clip.follows,
        )

    out: list[Example] = []
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for i, example in enumerate(pool.map(one, clips)):
            out.append(example)
            if (i + 1) % 1000 == 0:
                logger.info(
                    "spoke %d/%d clips (%.0f s)", i + 1, len(clips), time.monotonic() - started
                )
    return out


def with_pitch_spelt(example: Example) -> Example:
    """`example` with its voice's pitch class ("high" or "low", where it is asked) spelt
    before its words in the CTC target (`Recipe.ctc_pitch`)."""
    pitch = next((answer for kind, _, answer in example.tasks if kind == "pitch"), None)
    if pitch is None or example.transcript is None:
        return example
    return dataclasses.replace(example, transcript=f"{pitch} {example.transcript}")


def fit_window(clip: cases.Clip, max_samples: int) -> tuple[cases.Clip, Any]:
    """`clip` and its samples, a recording cut to the first sentences that fit in
    `max_samples` (one 30 s window): the features keep only that much, so the transcript
    must not say more."""
    audio = render(clip)
    while clip.more and len(audio) > max_samples:
        clip = dataclasses.replace(clip, more=clip.more[:-1], gaps=clip.gaps[:-1])
        audio = render(clip)
    return clip, audio


def draw_clips(recipe: Recipe) -> list[cases.Clip]:
    """The training clips: question types in the recipe's mix, from training voices only."""
    rng = random.Random(f"train-clips-{recipe.seed}")
    kinds = [k for k, _ in recipe.mix]
    weights = [w for _, w in recipe.mix]
    return [
        cases.draw_clip(rng, "train", rng.choices(kinds, weights)[0], recipe.long_sentences)
        for _ in range(recipe.clips)
    ]


class CTCHead(nn.Module):
    """CTC over the model's own output vocabulary (tied to `lm_head`) plus a blank.

    Tying puts the audio embeddings where the language model's output lives, so copying
    heard words into the answer is nearly the identity.
    """

    def __init__(self, lm_head: nn.Linear) -> None:
        super().__init__()
        self.lm_head = [lm_head]  # a reference, not a submodule: trained as part of the model
        self.blank = nn.Linear(lm_head.in_features, 1)

    @property
    def blank_id(self) -> int:
        return int(self.lm_head[0].out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lm_head[0](x), self.blank(x)], dim=-1)


AUDIO_PART = {"type": "audio", "audio_url": "clip"}  # a user turn's audio, in chat messages


class Prompts:
    """Token ids of the served prompt (the real chat template) around the audio."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._cache: dict[tuple[tuple[str, ...], str | None], list[list[int]]] = {}

    def around_audio(self, instruction: str | None, replies: Sequence[str] = ()) -> list[list[int]]:
        """Ids between the audio placeholders, generation prompt included: one spoken user
        turn per earlier reply (each followed by that reply), then the asked turn."""
        key = (tuple(replies), instruction)
        if key not in self._cache:
            messages: list[dict[str, Any]] = []
            for reply in replies:
                messages.append({"role": "user", "content": [AUDIO_PART]})
                messages.append({"role": "assistant", "content": reply})
            content: list[dict[str, str]] = [AUDIO_PART]
            if instruction is not None:
                content.append({"type": "text", "text": instruction})
            messages.append({"role": "user", "content": content})
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, tokenize=False, add_generation_prompt=True
            )
            self._cache[key] = [self.encode(part) for part in text.split("<|AUDIO|>")]
        return self._cache[key]

    def prompt(
        self, instruction: str | None, windows: list[int], history: Sequence[tuple[int, str]] = ()
    ) -> list[int]:
        """The whole prompt for audio of `windows` (audio tokens per window), after the
        spoken turns of `history` ((audio tokens, the reply to it), in order)."""
        parts = self.around_audio(instruction, [reply for _, reply in history])
        between = self.encode("<|audio_eos|><|audio_bos|>")
        audio: list[int] = []
        for i, count in enumerate(windows):
            audio += [*(between if i else []), *[self.audio_id] * count]
        ids = parts[0]
        for (count, _), part in zip(history, parts[1:-1], strict=True):
            ids = [*ids, *[self.audio_id] * count, *part]
        return [*ids, *audio, *parts[-1]]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids


def encode_batch(model: Any, features: list[torch.Tensor], frames: list[int]) -> list[torch.Tensor]:
    """Projected audio embeddings per clip, unpadded, as the padding-free encoder serves them.

    Args:
        model: the Qwen2-Audio model being trained.
        features: per clip, (mel bins, frames) features: the valid frames and a short tail.
        frames: per clip, how many frames are valid (the processor's attention mask).

    Clips are padded to the batch's longest; padded positions are masked as keys, so each
    clip's embeddings are those of the clip alone.
    """
    tower, projector = model.model.audio_tower, model.model.multi_modal_projector
    lengths = torch.tensor(frames)
    positions, counts = tower._get_feat_extract_output_lengths(lengths)
    # conv2 (stride 2) position p reads frames up to 2p + 2: each clip keeps its frames up to
    # there (as `encoder.encode_valid_frames` does) and zeros after.
    x = torch.zeros(len(features), features[0].shape[0], 2 * int(positions.max()) + 1)
    for i, (f, n) in enumerate(zip(features, positions.tolist(), strict=True)):
        kept = f[:, : 2 * n + 1]
        x[i, :, : kept.shape[-1]] = kept.float()
    x = nn.functional.gelu(tower.conv1(x))
    # A full window (2999-3000 frames) gives one position past the encoder's 1500: no clip
    # reads it, so it is dropped.
    x = nn.functional.gelu(tower.conv2(x))[:, :, : int(positions.max())].permute(0, 2, 1)
    x = x + tower.embed_positions.weight[: x.shape[1]]
    keys = torch.arange(x.shape[1])[None, :] < positions[:, None]
    mask = torch.zeros(len(features), 1, 1, x.shape[1])
    mask.masked_fill_(~keys[:, None, None, :], torch.finfo(x.dtype).min)
    for layer in tower.layers:
        x = layer(x, mask)
    x = tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
    x = projector(tower.layer_norm(x))
    return [x[i, : int(n)] for i, n in enumerate(counts)]


def spec_augment(features: torch.Tensor, frames: int, rng: random.Random) -> torch.Tensor:
    """Mask two frequency bands and two short time spans of the valid frames."""
    out = features.float().clone()
    fill = out[:, :frames].mean()
    for _ in range(2):
        width = rng.randint(0, 12)
        start = rng.randint(0, out.shape[0] - width)
        out[start : start + width, :frames] = fill
    for _ in range(2):
        width = rng.randint(0, max(1, min(15, frames // 12)))
        start = rng.randint(0, max(0, frames - width))
        out[:, start : start + width] = fill
    return out


def sequences(
    prompts: Prompts,
    chosen: list[tuple[str | None, str]],
    windows: list[list[int]],
    histories: Sequence[Sequence[tuple[int, str]]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded input ids, attention mask and labels (answer tokens and the end token only).

    `windows` holds each sample's audio-token counts per 30 s window; windows follow each
    other as audiotext's processor lays them out (`<|audio_eos|><|audio_bos|>` between).
    `histories` holds each sample's earlier spoken turns (`Prompts.prompt`).
    """
    rows, labels = [], []
    histories = histories or [()] * len(chosen)
    for (instruction, answer), counts, history in zip(chosen, windows, histories, strict=True):
        target = [*prompts.encode(answer), prompts.end_id]
        prompt = prompts.prompt(instruction, counts, history)
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    ids, attention = padded(rows, prompts.tokenizer.pad_token_id)
    label_ids, _ = padded(labels, -100)
    return ids, attention, label_ids


def padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows right-padded with `pad` to the longest, and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, attention


def lm_hidden(
    model: Any, ids: torch.Tensor, attention: torch.Tensor, audio: list[torch.Tensor]
) -> torch.Tensor:
    """The language model's last hidden states with audio embeddings in place."""
    embeds = model.model.language_model.embed_tokens(ids)
    slots = (ids == model.config.audio_token_id)[..., None]
    embeds = embeds.masked_scatter(slots, torch.cat(audio).to(embeds.dtype))
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=attention)
    hidden: torch.Tensor = out.last_hidden_state
    return hidden


def train(out: Path, recipe: Recipe = Recipe(), init: Path | None = None) -> Path:
    """Speak the clips, train, and write the checkpoint folder `out` (official layout).

    Args:
        out: the checkpoint folder to write.
        recipe: clips, steps, schedule and losses.
        init: a listening checkpoint to continue from (its weights; a fresh optimizer).
    """
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    recipe = with_autocast_decided(recipe)
    logger.info("matrix products in %s", "bfloat16" if recipe.bf16 else "float32")
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    staging = out.with_name(out.name + ".staging")
    staging.mkdir(parents=True, exist_ok=True)
    tokenizer = checkpoint.train_tokenizer(tokenizer_lines(), VOCAB_SIZE)
    checkpoint.save_processor(tokenizer, staging)
    config = checkpoint.model_config(SIZE, tokenizer, VOCAB_SIZE)
    processor = AutoProcessor.from_pretrained(staging)
    prompts = Prompts(processor.tokenizer, checkpoint.CHAT_TEMPLATE.read_text(encoding="utf-8"))

    started = time.monotonic()
    # Spoken clips are kept beside the output, so a restarted run skips speaking.
    spoken = out.parent / f".{out.name}-clips-{recipe.spoken_key()}.pt"
    if spoken.exists():
        examples = torch.load(spoken, weights_only=False)
    else:
        examples = speak_all(draw_clips(recipe), processor.feature_extractor)
        torch.save(examples, spoken)
    if recipe.ctc_pitch:
        examples = [with_pitch_spelt(e) for e in examples]
    held = [c for c in cases.cases("held_out", 70, seed=recipe.seed + 1)]
    held_examples = speak_all([c.clip for c in held], processor.feature_extractor)
    dialogues = cases.dialogues("held_out", 10, seed=recipe.seed + 1)
    turns = speak_all(
        [c for d in dialogues for c in (d.opener.clip, d.follow_up)], processor.feature_extractor
    )
    held_dialogues = [HeldDialogue(d, *turns[2 * i : 2 * i + 2]) for i, d in enumerate(dialogues)]
    logger.info("%d clips spoken in %.0f s", len(examples), time.monotonic() - started)

    if init is None:
        model = Qwen2AudioForConditionalGeneration(config)
    else:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    model.train()
    tower = model.model.audio_tower
    tower.embed_positions.weight.data.copy_(
        checkpoint.sinusoids(*tower.embed_positions.weight.shape)
    )
    tower.embed_positions.weight.requires_grad_(False)
    run = Run(model, CTCHead(model.lm_head), prompts, recipe, rng, started)
    logger.info(
        "training %.1f M parameters: %d CTC steps, then %d joint steps",
        _millions(model),
        recipe.ctc_steps,
        recipe.steps,
    )
    audio_stage(run, examples, [e for e in held_examples if e.transcript])

    def save() -> None:  # the folder is complete after every evaluation
        checkpoint.save_configs(config, staging, dtype="bfloat16")
        checkpoint.save_trained_weights(model, staging, dtype=torch.bfloat16)

    joint_stage(run, examples, held, held_examples, save, held_dialogues)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    logger.info("wrote %s in %.0f s", out, time.monotonic() - started)
    return out


@dataclass
class Run:
    """What both training stages share."""

    model: Any
    ctc_head: CTCHead
    prompts: Prompts
    recipe: Recipe
    rng: random.Random
    started: float

    def __post_init__(self) -> None:
        self.ctc = nn.CTCLoss(blank=self.ctc_head.blank_id, zero_infinity=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def audio_parameters(run: Run) -> list[nn.Parameter]:
    """What stage 1 trains: encoder, projector, output layer and the CTC blank head."""
    model = run.model
    audio_side = [
        *model.model.audio_tower.parameters(),
        *model.model.multi_modal_projector.parameters(),
        *model.lm_head.parameters(),
        *run.ctc_head.parameters(),
    ]
    return [p for p in audio_side if p.requires_grad]


def audio_stage(run: Run, examples: list[Example], held_speech: list[Example]) -> None:
    """Stage 1: the audio side spells English speech (CTC only; no language model runs)."""
    recipe, rng = run.recipe, run.rng
    # Single sentences only: a batch of recordings costs several times as much and teaches
    # the same words (the joint stage hears them).
    speech = sorted((e for e in examples if e.transcript and not e.long), key=lambda e: e.frames)
    parameters = audio_parameters(run)
    optimizer = _optimizer(parameters, recipe.ctc_lr)
    schedule = _schedule(optimizer, recipe.warmup, recipe.ctc_steps)
    for step in range(recipe.ctc_steps):
        start = rng.randrange(0, len(speech) - recipe.ctc_batch)
        batch = speech[start : start + recipe.ctc_batch]
        lead = lead_for_step(rng, recipe)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(recipe.bf16)):
            audio = _encode_augmented(run.model, batch, rng, lead)
            aux = _ctc_loss(run.ctc, run.ctc_head, audio, batch, run.prompts)
        assert aux is not None  # every clip here is English speech
        _step(optimizer, schedule, aux, parameters)
        _progress(run, "ctc step", step, recipe.ctc_steps, schedule, ctc=aux.item())
        if (step + 1) % recipe.eval_every == 0 or step == recipe.ctc_steps - 1:
            wer = ctc_wer(run.model, run.ctc_head, run.prompts, held_speech)
            logger.info("held-out after %d CTC steps: {'ctc_wer': %.3f}", step + 1, wer)


def joint_stage(
    run: Run,
    examples: list[Example],
    held: list[cases.Case],
    held_examples: list[Example],
    save: Callable[[], None],
    held_dialogues: Sequence[HeldDialogue] = (),
) -> None:
    """Stage 2: the whole model learns the answers (next-token loss, CTC beside it)."""
    recipe, rng = run.recipe, run.rng
    parameters = [p for p in run.model.parameters() if p.requires_grad]
    parameters += list(run.ctc_head.parameters())
    optimizer = _optimizer(parameters, recipe.lr)
    schedule = _schedule(optimizer, recipe.warmup, recipe.steps)
    short = sorted((e for e in examples if not e.long), key=lambda e: e.frames)
    long = sorted((e for e in examples if e.long), key=lambda e: e.frames)
    weights = dict(recipe.task_weights)
    openers = [e for e in short if any(kind == "chat" for kind, _, _ in e.tasks)]
    for step in range(recipe.steps):
        long_step = rng.random() < recipe.long_share
        samples = draw_batch(rng, recipe, long if long_step else short)
        lead = 0 if long_step else lead_for_step(rng, recipe)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(recipe.bf16)):
            loss, aux = batch_loss(
                run.model,
                run.ctc_head,
                run.ctc,
                run.prompts,
                samples,
                rng,
                weights,
                openers,
                lead,
            )
            total = loss + recipe.ctc_weight * aux if aux is not None else loss
        _step(optimizer, schedule, total, parameters)
        ctc = aux.item() if aux is not None else 0.0
        _progress(run, "step", step, recipe.steps, schedule, loss=loss.item(), ctc=ctc)
        if (step + 1) % recipe.eval_every == 0 or step == recipe.steps - 1:
            scores = evaluate(run.model, run.prompts, held, held_examples, held_dialogues)
            logger.info("held-out after %d steps: %s", step + 1, scores)
            save()


def _progress(run: Run, label: str, step: int, steps: int, schedule: Any, **losses: float) -> None:
    """Every 25th step and the last: `label step/steps`, the losses, the rate, the time."""
    if step % 25 == 0 or step == steps - 1:
        values = " ".join(f"{name} {value:.3f}" for name, value in losses.items())
        lr = schedule.get_last_lr()[0]
        logger.info("%s %d/%d %s lr %.2e (%.0f s)", label, step, steps, values, lr, run.elapsed())


def draw_batch(rng: random.Random, recipe: Recipe, pool: list[Example]) -> list[list[Example]]:
    """Samples of similar length from `pool` (sorted by length), each of one or more windows.

    Short clips come `batch` at a time; recordings up to `long_frames` mel frames in all,
    heard as the windows of one long clip: with `long_windows` 2, half of them in pairs;
    with more, in groups of `long_windows`, ..., 2, 1 recordings in turn.
    """
    if not pool[0].long:
        start = rng.randrange(0, len(pool) - recipe.batch)
        return [[e] for e in pool[start : start + recipe.batch]]
    start = rng.randrange(0, len(pool))
    chosen: list[Example] = []
    frames = 0
    for e in pool[start:] + pool[:start]:
        if chosen and frames + e.frames > recipe.long_frames:
            break
        chosen.append(e)
        frames += e.frames
    if recipe.long_windows == 2:
        half = len(chosen) // 4 * 2
        return [chosen[i : i + 2] for i in range(0, half, 2)] + [[e] for e in chosen[half:]]
    samples: list[list[Example]] = []
    sizes = itertools.cycle(range(recipe.long_windows, 0, -1))
    i = 0
    while i < len(chosen):
        size = next(sizes)
        samples.append(chosen[i : i + size])
        i += size
    return samples


def batch_loss(
    model: Any,
    ctc_head: CTCHead,
    ctc: nn.CTCLoss,
    prompts: Prompts,
    samples: list[list[Example]],
    rng: random.Random,
    weights: dict[str, float] | None = None,
    openers: Sequence[Example] = (),
    lead: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Answer loss (next token) and auxiliary CTC loss of one batch, questions drawn afresh.

    `weights` weighs the question types (`draw_task`); none: every task of a clip alike.
    A spoken follow-up asked as one (type `follow_up`) is the second turn of a voice chat
    whose first is one of `openers` (spoken questions), answered right. `lead`: up to this
    many frames of silence before each clip (`with_lead_silence`).
    """
    windows = [e for sample in samples for e in sample]
    # SpecAugment before the questions are drawn, as before follow-ups existed: a batch
    # without them makes the same random draws, so earlier runs reproduce.
    window_features = iter(_augmented(windows, rng, lead))
    chosen, histories = [], []
    for sample in samples:
        options = sample[0].tasks
        follows = sample[0].follows
        if follows is not None and any(fits(o, follows) for o in openers):
            options = [*options, (cases.FOLLOW_UP, None, "")]
        kind, instruction, answer = draw_task(rng, options, weights)
        history: list[tuple[Example, str]] = []
        if kind == cases.FOLLOW_UP:
            assert follows is not None
            opener, reply, answer = draw_opener(rng, openers, follows)
            history.append((opener, reply))
        if len(sample) > 1:  # one recording, two windows: both transcripts in order
            answer = " ".join(
                rng.choice([t for t in e.tasks if t[1] == instruction])[2] for e in sample
            )
        chosen.append((instruction, answer))
        histories.append(history)
    earlier = [[e for e, _ in history] for history in histories]
    opener_features = iter(_augmented([e for turns in earlier for e in turns], rng, lead))
    heard = in_prompt_order(earlier, samples)
    features, frames = zip(
        *in_prompt_order(
            [[next(opener_features) for _ in turns] for turns in earlier],
            [[next(window_features) for _ in sample] for sample in samples],
        ),
        strict=True,
    )
    audio = encode_batch(model, list(features), list(frames))
    spoken, counts = split_turns(audio, histories, [len(sample) for sample in samples])
    ids, attention, labels = sequences(prompts, chosen, counts, spoken)
    hidden = lm_hidden(model, ids, attention, audio)
    answer_mask = labels[:, 1:] != -100
    logits = model.lm_head(hidden[:, :-1][answer_mask]).float()
    loss = nn.functional.cross_entropy(logits, labels[:, 1:][answer_mask])
    return loss, _ctc_loss(ctc, ctc_head, audio, heard, prompts)


def chat_reply(opener: Example) -> str:
    """A spoken question's right answer."""
    return next(answer for kind, _, answer in opener.tasks if kind == "chat")


def fits(opener: Example, follows: tuple[str, int]) -> bool:
    """Whether a follow-up has an answer after this spoken question's answer."""
    return cases.followed(chat_reply(opener), follows) is not None


def draw_opener(
    rng: random.Random, openers: Sequence[Example], follows: tuple[str, int]
) -> tuple[Example, str, str]:
    """A spoken question for a follow-up to come after (one must `fit`): the question, its
    answer, and the follow-up's answer."""
    while True:
        opener = rng.choice(openers)
        answer = cases.followed(chat_reply(opener), follows)
        if answer is not None:
            return opener, chat_reply(opener), answer


def in_prompt_order(earlier: Sequence[Sequence[T]], own: Sequence[Sequence[T]]) -> list[T]:
    """Per sample, what its earlier turns hear, then what it hears itself: the order of the
    audio slots in a batch's prompts (`lm_hidden` fills them row by row)."""
    return [x for turns, mine in zip(earlier, own, strict=True) for x in (*turns, *mine)]


def split_turns(
    audio: Sequence[torch.Tensor], histories: Sequence[Sequence[tuple[Any, str]]], sizes: list[int]
) -> tuple[list[list[tuple[int, str]]], list[list[int]]]:
    """Audio embeddings in prompt order, split per sample: each earlier turn's audio tokens
    and reply, and the audio tokens of each of the sample's own `sizes` windows."""
    spoken, counts, i = [], [], 0
    for history, size in zip(histories, sizes, strict=True):
        turns = audio[i : i + len(history)]
        spoken.append([(len(a), reply) for a, (_, reply) in zip(turns, history, strict=True)])
        i += len(history)
        counts.append([len(a) for a in audio[i : i + size]])
        i += size
    return spoken, counts


def draw_task(
    rng: random.Random,
    tasks: list[tuple[str, str | None, str]],
    weights: dict[str, float] | None,
) -> tuple[str, str | None, str]:
    """One (type, instruction, answer) of a clip's `tasks`.

    Without `weights` every task is equally likely, so a type with many instructions is
    asked more often (an English statement is transcribed in 6 of its 12-16 tasks, its
    pitch asked in 2 where it has one). With them the type is drawn first, by weight among
    the clip's types (types not named weigh 1), then one of its instructions.
    """
    if not weights:
        return rng.choice(tasks)
    kinds = sorted({kind for kind, _, _ in tasks})
    kind = rng.choices(kinds, [weights.get(k, 1.0) for k in kinds])[0]
    return rng.choice([t for t in tasks if t[0] == kind])


def _encode_augmented(
    model: Any, examples: list[Example], rng: random.Random, lead: int = 0
) -> list[torch.Tensor]:
    """Projected audio embeddings of `examples` after SpecAugment (and `lead`)."""
    features, frames = zip(*_augmented(examples, rng, lead), strict=True)
    return encode_batch(model, list(features), list(frames))


def _augmented(
    examples: list[Example], rng: random.Random, lead: int = 0
) -> list[tuple[torch.Tensor, int]]:
    """The features of `examples` after SpecAugment, cut to the valid frames and the tail,
    and their valid frames; with `lead`, each after up to that many frames of silence (no
    random draws without it, so earlier runs reproduce)."""
    out = []
    for e in examples:
        features = spec_augment(e.features, e.frames, rng)[:, : e.frames + TAIL_FRAMES]
        silence = rng.randint(0, lead) if lead else 0
        out.append(with_lead_silence(features, e.frames, silence, silence_level(e.features)))
    return out


def lead_for_step(rng: random.Random, recipe: Recipe) -> int:
    """Most frames of silence before each clip of a step on single clips: the recipe's
    `lead_silence` in `lead_share` of them, else none (no random draw without it)."""
    if not recipe.lead_silence or rng.random() >= recipe.lead_share:
        return 0
    return round(recipe.lead_silence * FRAMES_PER_SECOND)


def silence_level(features: torch.Tensor) -> float:
    """The feature extractor's value for digital silence in a clip: its floor, 8 below the
    clip's loudest log-mel, which is 2 after its scaling."""
    return float(features.max()) - 2.0


def with_lead_silence(
    features: torch.Tensor, frames: int, silence: int, level: float
) -> tuple[torch.Tensor, int]:
    """`features` (`frames` valid) heard after `silence` frames at `level` (kept within one
    30 s window), and the frames now valid."""
    silence = max(0, min(silence, MAX_FRAMES - frames))
    if not silence:
        return features, frames
    lead = torch.full((features.shape[0], silence), level, dtype=features.dtype)
    return torch.cat([lead, features], dim=1), frames + silence


def encode_clean(model: Any, examples: list[Example]) -> list[torch.Tensor]:
    """Projected audio embeddings of `examples` as heard (no augmentation)."""
    return encode_batch(
        model,
        [e.features[:, : e.frames + TAIL_FRAMES].float() for e in examples],
        [e.frames for e in examples],
    )


def _ctc_loss(
    ctc: nn.CTCLoss,
    head: CTCHead,
    audio: list[torch.Tensor],
    batch: list[Example],
    prompts: Prompts,
) -> torch.Tensor | None:
    chosen = [(a, e.transcript) for a, e in zip(audio, batch, strict=True) if e.transcript]
    if not chosen:
        return None
    targets = [prompts.encode(" " + t) for _, t in chosen]
    width = max(len(a) for a, _ in chosen)
    stacked = torch.stack([nn.functional.pad(a, (0, 0, 0, width - len(a))) for a, _ in chosen])
    log_probs = head(stacked).float().log_softmax(-1).transpose(0, 1)
    loss: torch.Tensor = ctc(
        log_probs,
        torch.tensor([i for t in targets for i in t]),
        torch.tensor([len(a) for a, _ in chosen]),
        torch.tensor([len(t) for t in targets]),
    )
    return loss


def ctc_collapse(best: list[int], blank: int) -> list[int]:
    """Greedy CTC decoding: repeats merged, then blanks dropped."""
    return [t for i, t in enumerate(best) if t != blank and best[i - 1 : i] != [t]]


@torch.no_grad()
def ctc_wer(model: Any, head: CTCHead, prompts: Prompts, examples: list[Example]) -> float:
    """Word error rate of the CTC head's greedy spelling of English speech (stage 1)."""
    model.eval()
    audio = encode_clean(model, examples)
    model.train()
    errors = words = 0
    for clip, example in zip(audio, examples, strict=True):
        spelt = ctc_collapse(head(clip).argmax(-1).tolist(), head.blank_id)
        heard = cases.normalize(prompts.tokenizer.decode(spelt))
        said = cases.normalize(example.transcript or "")
        errors += edit_distance(said, heard)
        words += len(said)
    return errors / max(1, words)


@torch.no_grad()
def greedy(
    model: Any,
    prompts: Prompts,
    asked: list[tuple[str | None, Example]],
    limit: int = 24,
    histories: Sequence[Sequence[tuple[Example, str]]] | None = None,
) -> list[str]:
    """Greedy answers (no cache: the model is small) for (instruction, clip) pairs, each
    after its entry of `histories` (earlier spoken turns and their replies), if given."""
    histories = histories or [()] * len(asked)
    earlier = [[e for e, _ in history] for history in histories]
    audio = encode_clean(model, in_prompt_order(earlier, [[e] for _, e in asked]))
    spoken, counts = split_turns(audio, histories, [1] * len(asked))
    done: list[list[int]] = [[] for _ in asked]
    finished = [False] * len(asked)
    for _ in range(limit):
        rows = []
        for (instruction, _), turns, own, tokens in zip(asked, spoken, counts, done, strict=True):
            rows.append([*prompts.prompt(instruction, own, turns), *tokens])
        ids, attention = padded(rows, prompts.tokenizer.pad_token_id)
        hidden = lm_hidden(model, ids, attention, audio)
        last = hidden[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
        nxt = model.lm_head(last).argmax(-1).tolist()
        for i, token in enumerate(nxt):
            if not finished[i]:
                if token == prompts.end_id:
                    finished[i] = True
                else:
                    done[i].append(token)
        if all(finished):
            break
    return [prompts.tokenizer.decode(t) for t in done]


def evaluate(
    model: Any,
    prompts: Prompts,
    held: list[cases.Case],
    examples: list[Example],
    dialogues: Sequence[HeldDialogue] = (),
) -> dict[str, float]:
    """Word error rate (transcription) and accuracy per question type on held-out cases;
    with `dialogues`, the accuracy of their follow-ups (`follow_up`)."""
    model.eval()
    asked = [(c.instruction, e) for c, e in zip(held, examples, strict=True)]
    answers = [
        a for i in range(0, len(asked), 16) for a in greedy(model, prompts, asked[i : i + 16])
    ]
    if dialogues:
        answers += greedy(
            model,
            prompts,
            [(None, d.follow_up) for d in dialogues],
            histories=[[(d.opener, d.dialogue.opener.answer)] for d in dialogues],
        )
    model.train()
    return score([*held, *(d.dialogue.case for d in dialogues)], answers)


def _optimizer(parameters: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)


def _schedule(optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> Any:
    """Linear warm-up, then a cosine down to 5 % of the peak at `steps`."""

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)


def _step(optimizer: torch.optim.Optimizer, schedule: Any, loss: torch.Tensor, params: Any) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


def _millions(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
