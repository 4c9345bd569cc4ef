"""Synthetic English-like text for the data tests (generated, not quoted: no copyright question, any size).

Sentences of common English words with Zipf-like frequencies, capitalised and punctuated, in paragraphs: enough
structure for a BPE tokenizer to learn merges, deterministic for a seed.
"""

from __future__ import annotations

import random

_WORDS = (
    "the of and to a in that it is was he for on are as with his they at be this from have or by one had not but "
    "what all were when we there can an your which their said if do will each about how up out them then she many "
    "some so these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where most "
    "know get through back much before go good new write our used me man too any day same right look think also "
    "around another came come work three word must because does part even place well such here take why things help "
    "put years different away again off went old number great tell men say small every found still between name "
    "should home big give air line set own under read last never us left end along while might next sound below saw "
    "something thought both few those always looked show large often together asked house world going want school "
    "important until form food keep children feet land side without boy once animals life enough took sometimes "
    "four head above kind began almost live page got earth need far hand high year mother light parts country father"
)
WORDS = _WORDS.split()


def english_like(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(WORDS))]
    words = rng.choices(WORDS, weights, k=n_words)
    out, sentence, paragraph = [], [], []
    for w in words:
        sentence.append(w)
        if len(sentence) >= rng.randint(6, 16):
            text = " ".join(sentence)
            paragraph.append(text[0].upper() + text[1:] + rng.choice(".....?!"))
            sentence = []
            if len(paragraph) >= rng.randint(3, 6):
                out.append(" ".join(paragraph))
                paragraph = []
    if sentence:
        paragraph.append(" ".join(sentence) + ".")
    if paragraph:
        out.append(" ".join(paragraph))
    return "\n\n".join(out) + "\n"


def train_tokenizer(path, vocab_size: int = 320, seed: int = 0) -> str:
    """A byte-level BPE tokenizer.json trained on english_like text, with <|endoftext|> as its end-of-text token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([english_like(20_000, seed)], trainer)
    tok.save(str(path))
    return str(path)
