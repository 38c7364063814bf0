"""Small plait programs, each runnable as ``python -m examples.programs.<name>``."""
