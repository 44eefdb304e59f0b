#!/usr/bin/env bash
# Regenerates the committed speech clips with espeak-ng, sox and ffmpeg (Debian packages)
# and the project's virtualenv.
# The clips are committed, so tests and the demo never need these tools.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
say() { espeak-ng -v "$1" -s "$2" -w "$tmp/$3.wav" "$4"; }
say en-us 160 short "Hello, how are you today?"
say en-gb 150 demo "Good morning. Please book a table for two at seven tonight, somewhere quiet near the river."
say en-us 145 long "This is a longer recording made for testing. The weather today is cold and grey, \
with light rain expected in the afternoon. Our team meeting moves to Thursday at three o'clock, \
in the large room on the second floor. Please bring the quarterly report, the budget figures, \
and any questions you have about the new schedule. After the meeting we will walk to the station together."
sox "$tmp/short.wav" -r 16000 -c 1 -b 16 speech_short.flac
sox "$tmp/demo.wav" -r 16000 -c 1 -b 16 speech_demo.flac
ffmpeg -loglevel error -y -i "$tmp/long.wav" -ar 16000 -ac 1 -c:a libopus -b:a 24k speech_long.ogg
# The demo's clip: a held-out transcription case of the listening grammar (a voice and a
# sentence the listening checkpoint never heard in training): the first from seed 2024 on
# that the weights of 2026-12-03 transcribed word for word in float32 and bfloat16 (2024
# came back "The orange cake is beside the counter.", 2025 to 2027 missed an object or a
# colour too; the weights committed since also get 2024 and 2025 right in float32; README "The
# listening checkpoint").
"${PYTHON:-../../.venv/bin/python}" - <<'PY'
import soundfile
from audiotext.server.listening import cases, speech
case = cases.cases("held_out", 1, seed=2028, kinds=("transcribe",))[0]
soundfile.write("listening_demo.flac", speech.render(case.clip), speech.SAMPLE_RATE)
print(case.as_json())
PY
