"""BERT WordPiece tokenizers without a network: load a local/cached one, or train a small one.

The text encoder (docs/method.md §3) reads uncased BERT WordPiece ids. A real run loads
``bert-base-uncased`` (or any local BERT directory) with ``load_tokenizer``; the bundled
example and the ``lfvila-tiny`` preset can instead use a tokenizer trained on the corpus
sentences with ``train_wordpiece_tokenizer`` (the example's sentences use a few dozen words,
so the trained vocabulary is tiny; its ids are < 30,522 and fit the tiny preset's BERT
embedding table).

Transformers 5 trap (docs/engineering.md §4): ``BertTokenizerFast(vocab_file=...)`` — and, in 5.x,
``BertTokenizer(vocab_file=...)`` too — silently ignore the file and map every word to
``[UNK]``. Here the tokenizer is built from the vocabulary *dict* and saved with
``save_pretrained``, so the directory holds ``tokenizer.json`` + ``vocab.txt`` +
``tokenizer_config.json`` and ``AutoTokenizer.from_pretrained(out_dir)`` reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..hub import local_files_only as hub_local_files_only
from ..errors import DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in a trained vocabulary


def load_tokenizer(path_or_hub_id: str | Path, local_files_only: bool | None = None):
    """A tokenizer from a local directory or a hub id already in the local cache.

    ``local_files_only`` defaults to True unless ``HF_HUB_OFFLINE`` is explicitly "0": the
    toolkit never downloads behind the user's back. A missing tokenizer is a one-line
    ``DataError`` naming what was asked for.
    """
    from transformers import AutoTokenizer

    if local_files_only is None:
        local_files_only = hub_local_files_only()
    name = str(path_or_hub_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        where = "directory" if Path(name).exists() else "hub id (not in the local cache)"
        raise DataError(f"cannot load a tokenizer from {where} {name!r}: {str(exc).splitlines()[0]}") from None
    missing = [t for t in ("pad_token_id", "cls_token_id", "sep_token_id") if getattr(tokenizer, t) is None]
    if missing:
        raise DataError(f"tokenizer {name!r} has no {', '.join(missing)}; a BERT WordPiece tokenizer is needed")
    return tokenizer


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 1):
    """Build an uncased BERT WordPiece vocabulary from ``texts`` and save it to ``out_dir``.

    BERT normaliser (clean text, lower case, split CJK characters) and pre-tokeniser
    (whitespace + punctuation), ``##`` continuation prefix, special tokens ``[PAD] [UNK]
    [CLS] [SEP] [MASK]`` at ids 0–4, ``[CLS] text [SEP]`` post-processing.

    The vocabulary is whole words plus every character (alone and as ``##`` continuation), so
    any word can still be spelled. Words are kept by frequency (ties alphabetically) while
    ``vocab_size`` allows, those seen fewer than ``min_frequency`` times are left out. The
    ``tokenizers`` WordPiece trainer was not used: its merges break ties in an order that
    changes from process to process, so the same texts gave different vocabularies and ids.
    Returns the loaded tokenizer (what ``load_tokenizer(out_dir)`` gives).
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    if not words:
        raise DataError("cannot train a tokenizer: the texts are empty")
    chars = sorted({c for word in words for c in word})
    pieces = [*chars, *(f"##{c}" for c in chars)]
    budget = max(vocab_size - len(SPECIAL_TOKENS) - len(pieces), 0)
    ranked = sorted((w for w, n in words.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-words[w], w))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *pieces, *ranked[:budget]])}
    # BertTokenizer sets the BERT normaliser, pre-tokeniser, decoder and [CLS] $A [SEP] itself.
    tokenizer = BertTokenizer(vocab=dict(sorted(vocab.items(), key=lambda kv: kv[1])), do_lower_case=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    # Built from a dict, save_pretrained writes no vocab.txt; BERT tools that read one
    # (and older Transformers) expect it: one token per line, line number = id.
    tokens = sorted(vocab, key=vocab.__getitem__)
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return load_tokenizer(out_dir, local_files_only=True)
