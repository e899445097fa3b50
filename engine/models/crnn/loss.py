"""CTC loss for the CRNN's N×T×C logits.

A thin wrapper so training, fine-tuning after pruning and tests agree on the details that are
easy to get wrong: log_softmax in fp32 (CTC under fp16 autocast overflows), time-major layout for
``F.ctc_loss``, blank = 0, and ``zero_infinity=True`` so a label longer than the available time
steps (a very narrow crop) yields zero loss instead of an inf that poisons the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ctc_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    input_lengths: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """CTC loss of logits N×T×C against targets (padded N×S or concatenated 1-D class ids, no blanks).

    ``input_lengths`` (N,) gives valid steps per sample for right-padded batches (``W_i / 4``);
    all T steps when omitted.  ``reduction="mean"`` divides each sample's loss by its target length
    and averages over the batch (torch's definition).
    """
    n, t, _ = logits.shape
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # T×N×C
        if input_lengths is None:
            input_lengths = torch.full((n,), t, dtype=torch.long, device=logits.device)
        return F.ctc_loss(
            log_probs,
            targets.long(),
            input_lengths.long(),
            target_lengths.long(),
            blank=0,
            reduction=reduction,
            zero_infinity=True,
        )


def encode_texts(texts: list[str], charset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (concatenated class ids, lengths) with class = charset index + 1.

    Raises ValueError naming the character and text when a character is outside the charset.
    """
    index = {c: i + 1 for i, c in enumerate(charset)}
    ids: list[int] = []
    lengths: list[int] = []
    for text in texts:
        for ch in text:
            if ch not in index:
                raise ValueError(f"character {ch!r} in {text!r} is not in the charset")
            ids.append(index[ch])
        lengths.append(len(text))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)
