"""Models, stage 2 of 3: tokenizers with character offsets, the bridge to concept labels.

Every model lensbias loads comes with a ``TextTokenizer``: ``encode(text)`` gives token
ids, each token's character range in ``text`` and which tokens are special (BOS, CLS,
SEP). Concept labels are aligned to tokens through those character ranges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

BOS = "<|endoftext|>"


@dataclass(frozen=True)
class Encoding:
    """One text, tokenized."""

    ids: list[int]
    """Token ids, special tokens included."""
    offsets: list[tuple[int, int]]
    """Character range ``[start, end)`` of each token in the text; ``(0, 0)`` for specials."""
    special: list[bool]
    """True where the token is a special token (BOS/CLS/SEP) carrying no text."""


class TextTokenizer(Protocol):
    """What lensbias needs from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> Encoding: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class BPETokenizer:
    """A byte-level BPE tokenizer (HF ``tokenizers``) that prepends one BOS token."""

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self.bos_id: int = tokenizer.token_to_id(BOS)
        self.vocab_size: int = tokenizer.get_vocab_size()

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE on ``texts`` (deterministic for a fixed input order)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def encode(self, text: str) -> Encoding:
        enc = self._tok.encode(text, add_special_tokens=False)
        ids = [self.bos_id, *enc.ids]
        offsets = [(0, 0), *[tuple(o) for o in enc.offsets]]
        return Encoding(ids, offsets, [True] + [False] * len(enc.ids))

    def encode_batch_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids without BOS, for LM training streams (fast, parallel in Rust)."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def to_transformers(self) -> Any:
        """The same tokenizer as a transformers fast tokenizer (for TransformerLens' to_tokens)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self._tok, bos_token=BOS,
                                       eos_token=BOS, pad_token=BOS, add_bos_token=True,
                                       name_or_path="lensbias-bpe")


    def to_pretrained(self) -> Any:
        """A transformers fast tokenizer that, saved with ``save_pretrained`` and read back
        with ``AutoTokenizer``, gives this tokenizer's ids, offsets and special mask: BOS
        comes from the tokenizer's own post-processor, after the same offset trimming
        (``to_transformers``' BOS template would keep each token's leading space)."""
        from tokenizers import Tokenizer, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer.from_str(self._tok.to_str())
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1",
                                          special_tokens=[(BOS, self.bos_id)])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS,
                                       pad_token=BOS, name_or_path="lensbias-bpe")


class HFTokenizer:
    """A transformers fast tokenizer (MiniLM's WordPiece, GPT-2's BPE, ...)."""

    def __init__(self, tokenizer: Any, prepend_bos: bool = False):
        self._tok = tokenizer
        self.hf = tokenizer
        """The wrapped transformers tokenizer."""
        self.prepend_bos = prepend_bos and tokenizer.bos_token_id is not None
        self.vocab_size: int = len(tokenizer)

    def encode(self, text: str) -> Encoding:
        enc = self._tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        special = [bool(s) for s in enc["special_tokens_mask"]]
        if self.prepend_bos and (not ids or ids[0] != self._tok.bos_token_id):
            ids, offsets, special = ([self._tok.bos_token_id, *ids], [(0, 0), *offsets],
                                     [True, *special])
        return Encoding(ids, [(int(a), int(b)) for a, b in offsets], special)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)
