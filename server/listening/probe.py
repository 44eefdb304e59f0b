"""Where a listening checkpoint's audio side keeps, or loses, the voice's pitch.

A linear probe (logistic regression, 5-fold cross-validated) tells held-out clips spoken at
a high pitch from clips spoken at a low one, from the time-averaged representation at each
depth: the mel features, the convolutions, every encoder layer, and the projected audio
embeddings the language model reads. 0.5 is chance: what a depth's probe cannot tell, the
language model cannot answer from that depth on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiotext.server.listening import cases, train

# Five cross-validation folds, each with high and low voices to test on.
MIN_CLIPS = 20


def pitch_probe(folder: Path, count: int = 160, seed: int = 7) -> dict[str, float]:
    """Probe accuracy per depth on `count` held-out pitch clips (drawn with `seed`)."""
    if count < MIN_CLIPS:
        raise ValueError(f"the probe needs at least {MIN_CLIPS} clips (5 folds), not {count}")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(folder)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    rng = random.Random(seed)
    clips = [cases.draw_clip(rng, "held_out", "pitch") for _ in range(count)]
    high = np.array([clip.pitch >= 85 for clip in clips])
    examples = train.speak_all(clips, processor.feature_extractor, workers=4)
    depths = averaged_representations(model.eval(), examples)
    probe = LogisticRegression(max_iter=5000, C=10.0)
    return {
        depth: round(float(cross_val_score(probe, x, high, cv=5).mean()), 3)
        for depth, x in depths.items()
    }


@torch.no_grad()
def averaged_representations(model: Any, examples: list[train.Example]) -> dict[str, np.ndarray]:
    """Per depth, one row per clip: its representation averaged over time."""
    tower = model.model.audio_tower
    modules = {
        "conv": tower.conv2,
        **{f"layer {i + 1}": layer for i, layer in enumerate(tower.layers)},
        "projected": model.model.multi_modal_projector,
    }
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _in, out, name=name: seen.__setitem__(
                name, out[0] if isinstance(out, tuple) else out
            )
        )
        for name, module in modules.items()
    ]
    rows: dict[str, list[np.ndarray]] = {"mel": [], **{name: [] for name in modules}}
    try:
        for example in examples:  # one clip at a time: no padding in any average
            train.encode_clean(model, [example])  # as served: the valid frames and the tail
            rows["mel"].append(example.features[:, : example.frames].float().mean(1).numpy())
            for name in modules:
                x = seen[name][0]
                time_axis = 1 if name == "conv" else 0  # conv2's output is (channels, time)
                rows[name].append(x.float().mean(time_axis).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return {name: np.stack(x) for name, x in rows.items()}
