"""The `audiotext` command: `serve`, `model`, `demo`, `bench`, and the client commands
`ask`, `transcribe`, `translate`, `models`, `health`.

Heavy modules (vLLM, torch, transformers) are imported inside the commands, so `--help`
and `serve --dry-run` answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from audiotext.server import checkpoint
from audiotext.server.config import add_cli_args, config_from_args, to_vllm


class UsageError(Exception):
    """A command line that cannot run; reported in one line with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotext", description="Serve and query audio-text-to-text models on vLLM."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible server",
        description="Run vLLM's OpenAI server for Qwen2-Audio with audiotext's defaults. "
        "Flags audiotext does not know (or all after `--`) go to vLLM unchanged.",
    )
    add_cli_args(serve)
    serve.add_argument(
        "--dry-run", action="store_true", help="print the resolved vLLM configuration and exit"
    )

    model = commands.add_parser("model", help="built-in checkpoints")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    build = model_commands.add_parser(
        "build",
        help="put a built-in checkpoint in the cache: random-weight tiny or bench "
        "(deterministic), or the trained listening checkpoint",
    )
    build.add_argument("--size", choices=sorted(checkpoint.BUILTIN), default="tiny")
    build.add_argument("--seed", type=int, default=checkpoint.DEFAULT_SEED)
    build.add_argument("--out", type=Path, help="folder to write (default: the cache)")

    train = model_commands.add_parser(
        "train",
        help="train the listening checkpoint on synthetic speech (CPU, about 60 minutes)",
        description="Speak the grammar's clips with espeak-ng and train the listening "
        "checkpoint; the committed one came from the defaults, continued by the runs "
        "the README lists (The listening checkpoint).",
    )
    train.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    train.add_argument(
        "--ctc-steps", type=int, help="stage-1 (audio side, CTC) steps (default: the recipe's)"
    )
    train.add_argument(
        "--steps", type=int, help="stage-2 (whole model) steps (default: the recipe's)"
    )
    train.add_argument("--clips", type=int, help="clips to speak (default: the recipe's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    train.add_argument(
        "--ctc-lr", type=float, help="stage-1 peak learning rate (default: the recipe's)"
    )
    train.add_argument(
        "--init", type=Path, help="continue from this listening checkpoint's weights"
    )
    train.add_argument(
        "--long-share",
        type=float,
        help="share of joint steps on recordings of several sentences (default: the recipe's)",
    )
    train.add_argument(
        "--long-windows",
        type=int,
        choices=range(2, 5),
        help="at most this many recordings heard as the windows of one long clip "
        "(default: the recipe's)",
    )
    train.add_argument(
        "--long-sentences",
        type=_sentence_range,
        metavar="MIN-MAX",
        help="sentences per training recording, e.g. 5-7 (as many as a served 30 s window "
        "holds; each is cut to what fits in 30 s; default: the recipe's 2-4)",
    )
    train.add_argument(
        "--ctc-pitch",
        action="store_true",
        default=None,
        help="spell the voice's pitch class (high or low, where a clip has one) before its "
        "words in the CTC target, so the audio side keeps the pitch",
    )
    train.add_argument(
        "--lead-silence",
        type=_seconds,
        metavar="SECONDS",
        help="up to this much silence before each clip in a share of the steps on single "
        "clips (--lead-share), so speech is heard wherever it starts (default: the recipe's 0)",
    )
    train.add_argument(
        "--lead-share",
        type=float,
        help="share of the steps on single clips that hear --lead-silence (default: the "
        "recipe's 0.25)",
    )
    train.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="autocast matrix products to bfloat16 (default: where the CPU computes in it "
        "natively; elsewhere float32 is several times faster)",
    )
    train.add_argument(
        "--mix",
        type=_clip_mix,
        help="clips of each kind, as shares, e.g. pitch=0.14,chat=0.16 (kinds not named keep "
        "the recipe's share; shares are relative; kinds: long, the question types and "
        "follow_up, the spoken second turn of a voice chat)",
    )
    train.add_argument(
        "--task-weights",
        type=_task_weights,
        help="question-type weights for the joint stage, e.g. pitch=4,chat=3 (types not "
        "named weigh 1; default: every instruction of a clip alike)",
    )

    sentences = model_commands.add_parser(
        "sentences",
        help="print evaluation cases as JSON lines (text, voice, instruction, answer)",
        description="Cases drawn from the listening grammar: speak `text` with espeak-ng "
        "in `voice` (at `rate` words per minute and `pitch`), or synthesise `sound`, "
        "ask `instruction` (null: the audio is the question) and expect `answer`.",
    )
    sentences.add_argument("--size", choices=sorted(checkpoint.TRAINED), default="listening")
    sentences.add_argument(
        "--held-out", action="store_true", help="held-out voices and sentences (else training)"
    )
    sentences.add_argument("--count", type=int, default=20)
    sentences.add_argument("--seed", type=int, default=0)
    sentences.add_argument(
        "--follow-ups",
        action="store_true",
        help="two-turn voice chats instead: `turns` holds the spoken question (its answer is "
        "the model's first reply) and the spoken follow-up, answered from that reply",
    )

    score = model_commands.add_parser(
        "score",
        help="score a server serving the listening checkpoint on fresh held-out cases",
        description="Speak --count held-out cases (question types in turn) with espeak-ng, "
        "ask the server, and print WER, accuracy per type and the misses as JSON.",
    )
    score.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    score.add_argument("--model", help="served model name (default: the server's first)")
    score.add_argument("--count", type=int, default=140)
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--concurrency", type=int, default=8)
    score.add_argument(
        "--lead-silence",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="hear every clip after this much silence (speech that does not start at once)",
    )

    probe = model_commands.add_parser(
        "probe",
        help="how well each depth of a listening checkpoint's audio side tells a high voice "
        "from a low one (linear probe; 0.5 is chance)",
    )
    probe.add_argument(
        "--checkpoint",
        type=Path,
        help="listening checkpoint folder (default: the committed one)",
    )
    probe.add_argument("--count", type=int, default=160, help="held-out pitch clips")

    from audiotext.client import _cli_args as client_cli

    client_commands = {
        "ask": (
            client_cli.add_ask_args,
            "ask a running server about audio",
            "Send audio and an optional instruction to a running server; print the answer. "
            "With --batch, many at once, written as they complete.",
        ),
        "transcribe": (
            client_cli.add_transcribe_args,
            "transcribe speech with a running server",
            "The speech in an audio file, word for word (/v1/audio/transcriptions); "
            "verbose_json, srt and vtt carry timed segments.",
        ),
        "translate": (
            client_cli.add_transcribe_args,
            "translate speech into English with a running server",
            "The speech in an audio file, in English (/v1/audio/translations).",
        ),
        "models": (client_cli.add_models_args, "list a server's models", None),
        "health": (client_cli.add_health_args, "check that a server is up (exit 0 if so)", None),
    }
    for name, (add_args, help_text, description) in client_commands.items():
        sub = commands.add_parser(name, help=help_text, description=description or help_text)
        add_args(sub)

    demo = commands.add_parser(
        "demo", help="start a server on the listening checkpoint, ask one question, stop"
    )
    demo.add_argument("--audio", type=Path, required=True, help="speech file to send")
    demo.add_argument("--text", default="What does the person say?")

    # Its own parser (audiotext.benchmarks.bench) reads the rest, so `bench --help` works
    # and the benchmark's dependencies load only when it runs.
    commands.add_parser(
        "bench",
        add_help=False,
        help="compare audiotext with stock vLLM, transformers and the raw loop "
        "(bench --help for options)",
    )
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("audiotext").setLevel(logging.INFO)
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args, extra)
    except (UsageError, ValueError) as e:
        print(f"audiotext {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for the user; vLLM has logged its details already
        print(f"audiotext {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse a command line; for `serve`, also return the flags meant for vLLM."""
    parser = build_parser()
    argv = list(argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    args, unknown = parser.parse_known_args(argv)
    if args.command not in ("serve", "bench") and (unknown or passthrough):
        # The command's own usage, not the top level's: that is the one to read.
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown + passthrough)}")
    return args, unknown + passthrough


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "serve":
        config = config_from_args(args, extra)
        if args.dry_run:
            invocation = to_vllm(config)
            shown = {"env": invocation.redacted_env(), "argv": invocation.redacted_argv()}
            print(json.dumps(shown, indent=2))
            return 0
        from audiotext.server.launcher import LaunchError, check_model, serve
        from audiotext.server.supervisor import CHILD_ENV, Supervisor

        try:
            if os.environ.get(CHILD_ENV):
                serve(config)
                return 0
            check_model(config)
        except LaunchError as e:
            raise UsageError(str(e)) from e
        return Supervisor(config).run()
    if args.command == "model":
        return _model(args)
    if args.command in ("ask", "transcribe", "translate", "models", "health"):
        from audiotext.client._cli import run

        return run(args.command, args)
    if args.command == "demo":
        from audiotext.server.demo import run_demo

        print(json.dumps(run_demo(args.audio, args.text), ensure_ascii=False))
        return 0
    if args.command == "bench":
        from audiotext.benchmarks import bench

        parser = argparse.ArgumentParser(
            prog="audiotext bench",
            description=bench.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        bench.add_cli_args(parser)
        bench.main(parser.parse_args(extra))
        return 0
    raise UsageError(f"unknown command {args.command}")


def _task_weights(text: str) -> tuple[tuple[str, float], ...]:
    """`pitch=4,chat=3` as ((type, weight), ...), every type one the grammar asks."""
    from audiotext.server.listening.cases import FOLLOW_UP, KINDS

    return _weights(text, (*KINDS, FOLLOW_UP), "question type")


def _clip_mix(text: str) -> tuple[tuple[str, float], ...]:
    """`pitch=0.14,long=0.12` as ((kind, share), ...), every kind one a clip can be drawn as."""
    from audiotext.server.listening.cases import FOLLOW_UP, KINDS

    return _weights(text, ("long", *KINDS, FOLLOW_UP), "kind of clip")


def _weights(text: str, known: tuple[str, ...], what: str) -> tuple[tuple[str, float], ...]:
    """`NAME=W,...` as ((name, weight), ...), every name in `known`, every weight >= 0."""
    out = []
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        if kind not in known:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {kind!r}; choose among {', '.join(known)}"
            )
        try:
            value = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: write TYPE=WEIGHT") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{item!r}: a weight is a number >= 0")
        out.append((kind, value))
    return tuple(out)


def _seconds(text: str) -> float:
    """Seconds of silence: 0 to 30 (one window; training keeps each clip within one)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write seconds, e.g. 12.5") from None
    if not 0 <= seconds <= 30:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 30 seconds")
    return seconds


def _sentence_range(text: str) -> tuple[int, int]:
    """`5-7` as (5, 7), `5` as (5, 5): a recording has at least two sentences."""
    low, _, high = text.partition("-")
    try:
        span = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write MIN-MAX, e.g. 5-7") from None
    if not 2 <= span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: a recording has 2 <= MIN <= MAX sentences")
    return span


def _model(args: argparse.Namespace) -> int:
    if args.model_command == "build":
        out = args.out or checkpoint.builtin_path(args.size, args.seed)
        print(checkpoint.build(args.size, out, seed=args.seed))
    elif args.model_command == "train":
        import dataclasses

        from audiotext.server.listening import train

        changes = {
            "ctc_steps": args.ctc_steps,
            "steps": args.steps,
            "clips": args.clips,
            "seed": args.seed,
            "lr": args.lr,
            "ctc_lr": args.ctc_lr,
            "long_share": args.long_share,
            "long_windows": args.long_windows,
            "long_sentences": args.long_sentences,
            "bf16": args.bf16,
            "ctc_pitch": args.ctc_pitch,
            "lead_silence": args.lead_silence,
            "lead_share": args.lead_share,
            "task_weights": args.task_weights,
        }
        if args.mix is not None:
            changes["mix"] = tuple({**dict(train.Recipe().mix), **dict(args.mix)}.items())
        recipe = dataclasses.replace(
            train.Recipe(), **{k: v for k, v in changes.items() if v is not None}
        )
        print(train.train(args.out, recipe, init=args.init))
    elif args.model_command == "sentences":
        from audiotext.server.listening import cases

        split: cases.Split = "held_out" if args.held_out else "train"
        drawn = cases.dialogues if args.follow_ups else cases.cases
        for case in drawn(split, args.count, args.seed):
            print(json.dumps(case.as_json(), ensure_ascii=False))
    elif args.model_command == "score":
        import os

        from audiotext.server.listening.score import score_server

        api_key = os.environ.get("AUDIOTEXT_API_KEY")
        result = score_server(
            args.base_url,
            args.count,
            args.seed,
            args.model,
            api_key,
            args.concurrency,
            args.lead_silence,
        )
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif args.model_command == "probe":
        from audiotext.server.listening.probe import pitch_probe

        folder = args.checkpoint or checkpoint.TRAINED["listening"]
        print(json.dumps(pitch_probe(folder, args.count), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
