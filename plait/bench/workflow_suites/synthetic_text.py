"""Deterministic filler text for benchmark prompts: common lowercase English words, about one token each.

The same ``(num_words, seed)`` gives the same text in every process and on every run: the generator is seeded with
the seed's string form (``random.Random`` hashes a ``str`` seed with SHA-512, unlike the salted built-in ``hash``).
"""

from __future__ import annotations

import random

# Short, frequent words: each is a single token (with its leading space) in the Llama-3 and SmolLM2 vocabularies, so
# a prompt of N words is close to N tokens and prompt sizes can be planned from word counts.
_WORD_LIST = """
    the of and to in is that for it as was with be by on not he this are or his from at which but have an had
    they you were their one all we can her has there been if more when will would who so no out up into than
    them only other time new some could these two may first then do any like my now over such our man me even
    most made after also did many before must through back years where much your way well down should because
    each just those people how too little state good very make world still own see men work long get here
    between both life being under never day same another know while last might us great old year off come since
    against go came right used take three small large next early young important few public bad able without
    general case number group problem fact hand part place week company system program question government night
    point home water room mother area money story month lot study book eye job word business issue side kind
    head house service friend father power hour game line end member law car city community name president team
    minute idea kid body information school face others level office door health person art war history party
    result change morning reason research girl guy moment air teacher force education foot boy age policy
    process music market sense nation plan college interest death experience effect use class control care field
    development role effort rate heart drug show leader light voice wife police mind price report decision son
    view relationship town road arm difference value building action model season society tax director position
    player record paper space ground form event official matter center couple site project activity star table
    need court oil situation cost industry figure street image phone data picture practice piece land product
    doctor wall patient worker news test movie north love support technology step baby computer type attention
    film tree source organization hair window evidence population truth song
"""
WORDS: tuple[str, ...] = tuple(_WORD_LIST.split())


def synthetic_text(num_words: int, seed: int | str) -> str:
    """``num_words`` words drawn from ``WORDS`` by a generator seeded with ``seed``; sentences of 8-16 words."""
    if num_words <= 0:
        return ""
    rng = random.Random(f"synthetic-text:{seed}")
    words = rng.choices(WORDS, k=num_words)  # one call: prompts of thousands of words are built quickly
    end = rng.randint(8, 16) - 1
    while end < num_words:  # periods break the text into sentences without adding words
        words[end] += "."
        end += rng.randint(8, 16)
    return " ".join(words)
