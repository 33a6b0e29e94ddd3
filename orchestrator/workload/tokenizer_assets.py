"""A tiny, offline, deterministic TikToken vocabulary and the text corpus it is learned from.

Megatron's `TikTokenizer` (`--tokenizer-type TikTokenizer`) reads a JSON list of
`{"rank", "token_bytes", "token_str"}` entries: the 256 single bytes first, then BPE merges in
rank order. The seed case ships a 128k-token vocabulary; the frozen tiny model needs a few hundred
tokens, so we learn merges with a plain byte-pair-encoding pass over a synthetic corpus. Both the
corpus and the merges depend on nothing but this file, so regenerating them gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

from orchestrator.fsutil import write_bytes_atomic

# --tiktoken-num-special-tokens: Megatron's 7 named specials (<unk>, <s>, </s>, ...) plus fillers.
NUM_SPECIAL_TOKENS = 16
VOCAB_SIZE = 512  # --vocab-size: specials + 256 bytes + merges
CORPUS_SEED = 2008
CORPUS_SENTENCES = 6000

# Close to the GPT pre-tokenizer (a leading space stays with the word) without needing `regex`.
_PRETOKEN = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+")

_SUBJECTS = [
    "the band", "a stranger", "my friend", "the city", "everyone in the room", "the night",
    "a girl with glitter", "the old bartender", "the crowd", "nobody", "the music",
    "the doorman", "the dancer", "a tired nerd",
]
_VERBS = [
    "waits for", "dances with", "remembers", "travels to", "knows", "forgets", "finds",
    "talks about", "looks at", "walks into", "sings about", "dreams of", "leaves",
    "believes in", "wants",
]
_OBJECTS = [
    "the bar", "a club", "the basement", "New York", "the movies", "the big swollen heart of life",
    "something new", "the Lower East Side", "the disco", "a quiet corner", "the feeling",
    "the place where you can be yourself", "the year 2008", "the last train", "the light",
]
_TAILS = [
    "", " tonight", " again", " like the movies", " in the rain", " after midnight",
    " for a while", " with everyone", " one more time", " before the sun comes up",
]
_OPENERS = ["", "And ", "But ", "So ", "Then ", "Maybe "]


def corpus_text(sentences: int = CORPUS_SENTENCES, seed: int = CORPUS_SEED) -> str:
    """A synthetic English corpus: template sentences drawn with a fixed seed."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        opener = rng.choice(_OPENERS)
        subject = rng.choice(_SUBJECTS)
        if opener:
            sentence = f"{opener}{subject}"
        else:
            sentence = subject[0].upper() + subject[1:]
        sentence += f" {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}"
        lines.append(sentence + rng.choice([".", ".", ".", ",", "!", "?"]))
    return " ".join(lines) + "\n"


def _merge_word(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_merges(text: str, num_merges: int) -> list[bytes]:
    """Byte-pair merges, most frequent pair first; ties broken by the pair's bytes."""
    words = Counter(tuple(bytes([b]) for b in m.encode()) for m in _PRETOKEN.findall(text))
    merges: list[bytes] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best[0] + best[1])
        new_words: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            new_words[_merge_word(word, best)] += count
        words = new_words
    return merges


def vocab_entries(vocab_size: int = VOCAB_SIZE, num_special: int = NUM_SPECIAL_TOKENS) -> list[dict]:
    """Entries of the TikToken vocabulary JSON (ranks 0..vocab_size-num_special-1)."""
    num_merges = vocab_size - num_special - 256
    tokens = [bytes([b]) for b in range(256)] + learn_merges(corpus_text(), num_merges)
    if len(tokens) != vocab_size - num_special:
        raise RuntimeError(f"corpus too small for {num_merges} merges")
    return [
        {
            "rank": rank,
            "token_bytes": base64.b64encode(tok).decode("ascii"),
            "token_str": tok.decode("utf-8", errors="replace"),
        }
        for rank, tok in enumerate(tokens)
    ]


def write_vocab(path: str | Path, vocab_size: int = VOCAB_SIZE, num_special: int = NUM_SPECIAL_TOKENS) -> str:
    """Write the vocabulary JSON; return its sha256."""
    data = json.dumps(vocab_entries(vocab_size, num_special), indent=0).encode()
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()
