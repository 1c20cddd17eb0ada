"""Word-level language modelling on WikiText-2, as in PyTorch's ``word_language_model``.

Each line is split on whitespace and ``<eos>`` appended; the vocabulary is built from the
training file in order of first appearance; valid/test words outside it map to ``<unk>``.
The token stream is cut into ``bsz`` columns (:func:`batchify`) and read in BPTT chunks
(:func:`get_batch`). CHOCO-SGD's LSTM runs (arXiv:1907.09356, Table 3) use BPTT 30 and a
batch of 32 per node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .base import DataError, DatasetInfo, require_files

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
WIKITEXT2_FILES = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Word <-> id maps; ``itos[i]`` is the word of id ``i``."""

    itos: tuple[str, ...]
    stoi: dict[str, int] = field(repr=False)

    @classmethod
    def from_words(cls, words: list[str]) -> Vocabulary:
        """Ids in order of first appearance (duplicates ignored)."""
        stoi: dict[str, int] = {}
        for word in words:
            stoi.setdefault(word, len(stoi))
        return cls(tuple(stoi), stoi)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: list[str]) -> torch.Tensor:
        """``int64`` ids of ``words``; unknown words become ``<unk>`` (which must exist)."""
        unk = self.stoi.get(UNK)
        try:
            ids = [self.stoi[w] if unk is None else self.stoi.get(w, unk) for w in words]
        except KeyError as err:
            raise DataError(f"word {err} is not in the vocabulary and there is no {UNK}") from None
        return torch.tensor(ids, dtype=torch.int64)


@dataclass(frozen=True, eq=False)
class LanguageModelData:
    """Token-id streams (``int64``, 1-D) of a language-modelling corpus."""

    #: metadata; ``num_classes`` is the vocabulary size, ``input_shape`` is ``()``
    info: DatasetInfo
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def read_words(path: Path, lowercase: bool = False) -> list[str]:
    """All words of a token file, ``<eos>`` after every line (blank lines included)."""
    words: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words.extend((line.lower() if lowercase else line).split())
            words.append(EOS)
    return words


def wikitext2_folder(data_dir: str | Path) -> Path:
    """``data_dir`` or ``data_dir/wikitext-2`` (the unzipped folder), whichever has the files."""
    root = Path(data_dir).expanduser()
    for folder in (root, root / "wikitext-2"):
        if (folder / WIKITEXT2_FILES[0]).is_file():
            return folder
    require_files(
        root, WIKITEXT2_FILES, "wikitext2",
        "Unzip wikitext-2-v1.zip and pass the folder holding wiki.{train,valid,test}.tokens "
        "(or its parent) as --data-dir",
    )  # fmt: skip
    return root


def load_wikitext2(data_dir: str | Path, lowercase: bool = False) -> LanguageModelData:
    """WikiText-2 (word level) from local ``wiki.{train,valid,test}.tokens`` files.

    ``lowercase=True`` approximates the authors' torchtext pipeline (lower-cased text).

    Raises
    ------
    DataError
        If any of the three token files is missing.
    """
    folder = wikitext2_folder(data_dir)
    require_files(folder, WIKITEXT2_FILES, "wikitext2", "All three token files are needed")
    train_words = read_words(folder / WIKITEXT2_FILES[0], lowercase)
    vocab = Vocabulary.from_words([*train_words, UNK])  # <unk> last unless train has it
    train = vocab.encode(train_words)
    valid = vocab.encode(read_words(folder / WIKITEXT2_FILES[1], lowercase))
    test = vocab.encode(read_words(folder / WIKITEXT2_FILES[2], lowercase))
    log.info("wikitext2: vocab %d, tokens %d/%d/%d", len(vocab), len(train), len(valid), len(test))
    info = DatasetInfo("wikitext2", len(vocab), (), len(train), len(test))
    return LanguageModelData(info, vocab, train, valid, test)


def batchify(tokens: torch.Tensor, bsz: int) -> torch.Tensor:
    """Cut a 1-D stream into ``bsz`` contiguous columns: shape ``(len // bsz, bsz)``.

    Column ``j`` holds tokens ``j·nbatch … (j+1)·nbatch − 1``; the tail that does not fill a
    row is dropped, as in PyTorch's ``word_language_model``.
    """
    if tokens.dim() != 1:
        raise DataError(f"batchify needs a 1-D token stream, got shape {tuple(tokens.shape)}")
    nbatch = tokens.numel() // bsz if bsz > 0 else 0
    if nbatch < 2:
        raise DataError(f"batchify needs at least 2·bsz tokens; got {tokens.numel()} for bsz={bsz}")
    return tokens[: nbatch * bsz].view(bsz, nbatch).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``i … i+L−1`` of ``source`` as input and rows ``i+1 … i+L`` as target.

    ``L = min(bptt, len(source) − 1 − i)``; input has shape ``(L, bsz)``, the target is
    flattened to ``(L·bsz,)`` to match ``logits.view(-1, vocab)``.
    """
    seq_len = min(bptt, len(source) - 1 - i)
    if seq_len < 1 or i < 0:
        raise DataError(f"get_batch: row {i} leaves no target in a source of {len(source)} rows")
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def bptt_batches(source: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All :func:`get_batch` chunks of ``source`` in order (:func:`num_bptt_batches` of them)."""
    if bptt < 1:
        raise DataError(f"bptt must be >= 1, got {bptt}")
    for i in range(0, len(source) - 1, bptt):
        yield get_batch(source, i, bptt)


def num_bptt_batches(rows: int, bptt: int) -> int:
    """Chunks :func:`bptt_batches` yields for a batchified source of ``rows`` rows."""
    return max(0, -(-(rows - 1) // bptt))


def shard_tokens(tokens: torch.Tensor, n: int, rank: int) -> torch.Tensor:
    """Node ``rank``'s contiguous share of a token stream (``n`` near-equal pieces).

    Contiguous pieces keep sentences whole; lengths differ by at most one token.
    """
    if not 0 <= rank < n:
        raise DataError(f"rank must be in [0, {n}), got {rank}")
    bounds = [k * tokens.numel() // n for k in range(n + 1)]
    return tokens[bounds[rank] : bounds[rank + 1]]


def lm_steps_per_epoch(num_tokens: int, n: int, bsz: int, bptt: int) -> int:
    """BPTT steps per epoch that *every* node can take: the minimum over the ``n`` shards.

    Every gossip round is a collective exchange, so all ranks must take the same number.
    """
    rows = [(((k + 1) * num_tokens // n) - (k * num_tokens // n)) // bsz for k in range(n)]
    return min(num_bptt_batches(r, bptt) for r in rows)
