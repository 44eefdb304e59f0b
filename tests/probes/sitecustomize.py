"""A measuring probe for servers under test: counts audio decodes, per process.

Tests start a server with this folder on PYTHONPATH and AUDIOTEXT_DECODE_LOG naming a
file; Python then runs this module at start in the server and in every process vLLM
starts. Each libsndfile decode (`soundfile.SoundFile.read`, which audiotext's intake,
vLLM's own audio loader and librosa all decode WAV and FLAC with) appends the decoding
process's id to that file. Reading a header (`soundfile.info`) is not a decode.
"""

import os

_LOG = os.environ.get("AUDIOTEXT_DECODE_LOG")

if _LOG:
    import functools

    import soundfile

    _read = soundfile.SoundFile.read

    @functools.wraps(_read)
    def _counted_read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()}\n")
        return _read(self, *args, **kwargs)

    soundfile.SoundFile.read = _counted_read
