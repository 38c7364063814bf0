"""Trace replay: real traffic (Mooncake, Azure, BurstGPT, LMCache agent sessions) replayed open-loop against plait
in-process or any OpenAI-compatible URL, in plait mode and baseline mode, with a table, JSON, a markdown report and
plots. The command is ``plait bench replay`` (``plait/bench/replay_bench.py``)."""
