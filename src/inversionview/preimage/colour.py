"""Token colouring (method.md §7, paper Appendix G) and the decoder's probability of an input.

ΔP_t = P(x_t | x_<t, z_q) - P(x_t | x_<t, z_BOS), where z_BOS is the same site's activation
at position 0. z_BOS is the same for every input (position 0 sees only BOS), so it carries
no information about the input: ΔP > 0 marks a token the query activation made more likely.
"""

from __future__ import annotations

import torch

from inversionview.decoder.model import Decoder


@torch.no_grad()
def token_log_probabilities(decoder: Decoder, tokens: torch.Tensor, activation: torch.Tensor,
                            site_id: int, pad_id: int, chunk: int = 4096) -> torch.Tensor:
    """``[batch, pos]`` log P(x_t | x_<t, z) of each token of ``tokens`` ``[batch, pos]``
    under the decoder conditioned on ``activation`` (``[d]`` for all rows, or ``[batch, d]``).
    Position 0 (BOS, given) and PAD positions are NaN."""
    device = next(decoder.parameters()).device
    rows = []
    for start in range(0, tokens.shape[0], chunk):
        block = tokens[start:start + chunk].to(device)
        z = activation.to(device, torch.float32)
        z = z.expand(block.shape[0], -1) if z.dim() == 1 else z[start:start + chunk]
        site_ids = torch.full((block.shape[0],), site_id, dtype=torch.long, device=device)
        logits = decoder(block[:, :-1], z, site_ids).float()
        picked = logits.log_softmax(-1).gather(-1, block[:, 1:, None]).squeeze(-1)
        values = torch.full(block.shape, float("nan"), device=device)
        values[:, 1:] = picked.masked_fill(block[:, 1:] == pad_id, float("nan"))
        rows.append(values.cpu())
    return torch.cat(rows)


def sequence_log_probability(token_log_probs: torch.Tensor) -> torch.Tensor:
    """``[batch]`` log-probability of each whole input (sum over its tokens after BOS)."""
    return token_log_probs.nan_to_num(0.0).sum(dim=1)


@torch.no_grad()
def delta_p(decoder: Decoder, tokens: torch.Tensor, query_activation: torch.Tensor,
            bos_activation: torch.Tensor, site_id: int, pad_id: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ΔP_t ``[batch, pos]``, log P(x_t | x_<t, z_q) ``[batch, pos]``); NaN at BOS and PAD.
    The second is returned because ΔP needs it anyway (a sample's log-probability)."""
    with_query = token_log_probabilities(decoder, tokens, query_activation, site_id, pad_id)
    with_bos = token_log_probabilities(decoder, tokens, bos_activation, site_id, pad_id)
    return with_query.exp() - with_bos.exp(), with_query
