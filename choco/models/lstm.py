"""Word-level LSTM language model (PyTorch's ``word_language_model``; CHOCO-SGD's LSTM).

CHOCO-SGD's WikiText-2 runs (arXiv:1907.09356, Table 3, and the authors' training script)
use 3 layers of 650 units, dropout 0.4, tied input/output embeddings (Press & Wolf,
arXiv:1608.05859), BPTT 30 and gradient clipping 0.4. With the whitespace-tokenized
vocabulary (33,278 words) this model has 31,819,578 parameters; the paper's 28.95M matches a
vocabulary of about 28.9K words, presumably the authors' lower-cased torchtext one
(``lowercase=True`` in :func:`choco.data.load_wikitext2` comes closer).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ModelError

Hidden = tuple[torch.Tensor, torch.Tensor]


class LSTMLanguageModel(nn.Module):
    """Embedding → dropout → n-layer LSTM → dropout → linear decoder over the vocabulary.

    Parameters
    ----------
    vocab_size
        Number of words (``len(data.vocab)``).
    embed_dim, hidden_size, num_layers
        Sizes; ``tie_weights`` requires ``embed_dim == hidden_size``.
    dropout
        On the embeddings, between LSTM layers and on the LSTM output.
    tie_weights
        Share the embedding matrix with the decoder (one tensor, counted once).

    Inputs are ``(T, B)`` token ids (sequence first); :meth:`init_hidden` gives the zero
    state. Embedding and decoder weights start ``U(−0.1, 0.1)``, the decoder bias at 0.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 650,
        hidden_size: int = 650,
        num_layers: int = 3,
        dropout: float = 0.4,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        if vocab_size < 2 or embed_dim < 1 or hidden_size < 1 or num_layers < 1:
            raise ModelError(
                "lstm needs vocab_size >= 2 and positive sizes, got "
                f"vocab_size={vocab_size}, embed_dim={embed_dim}, hidden_size={hidden_size}, "
                f"num_layers={num_layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {dropout}")
        if tie_weights and embed_dim != hidden_size:
            raise ModelError(
                f"tie_weights needs embed_dim == hidden_size, got {embed_dim} != {hidden_size}; "
                "set both (e.g. 650) or pass tie_weights=False"
            )
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.LSTM(
            embed_dim, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0
        )
        self.decoder = nn.Linear(hidden_size, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero ``(h, c)``, each ``(num_layers, batch_size, hidden_size)``, on the model device."""
        weight = self.decoder.bias
        shape = (self.num_layers, batch_size, self.hidden_size)
        return weight.new_zeros(shape), weight.new_zeros(shape)

    def forward(
        self, tokens: torch.Tensor, hidden: Hidden | None = None
    ) -> tuple[torch.Tensor, Hidden]:
        """Logits ``(T, B, vocab_size)`` and the final hidden state."""
        if tokens.dim() != 2:
            raise ModelError(f"lstm expects (T, B) token ids, got shape {tuple(tokens.shape)}")
        if hidden is None:
            hidden = self.init_hidden(tokens.shape[1])
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the autograd history between BPTT chunks (truncated backpropagation)."""
    return hidden[0].detach(), hidden[1].detach()
