"""The `listening` checkpoint: a small Qwen2-Audio trained here on synthetic speech.

`grammar.toml` is its world (vocabulary, sentence templates, questions, voices and what is
held out); `cases` turns it into requests with expected answers, `speech` into audio
(espeak-ng and synthetic sounds), and `train` into the committed checkpoint.
"""
