"""Per-sequence completion log-probs without materialising full-vocabulary logits.

A causal LM's logits are [batch, seq, vocab]; at SmolLM2's vocab of 49,152 and 1,024 tokens that is
200 MB per sequence in fp32, most of it for prompt and padding positions nobody needs. Here the
decoder runs once over the (chosen | rejected) batch, the hidden states at the positions that
predict completion tokens are gathered ([M, hidden], M = completion tokens in the batch), and the
output layer is applied to them in chunks by a custom autograd function that recomputes each chunk's
[chunk, vocab] logits in backward instead of keeping them (``output_layer.py``): at most one chunk of
logits is alive at any time, in forward and in backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from preftune.modeling.moe import recorded_router_logits, router_aux, token_weights
from preftune.modeling.output_layer import ChunkedTokenLogprobs
from preftune.modeling.output_transform import OutputTransform, derive_output_transform, output_head
from preftune.modeling.prefix_sharing import packed_decoder_states


@dataclass
class SequenceLogps:
    """Per-sequence sums over completion tokens: ``logps`` [N] and token counts ``lengths`` [N].

    With ``per_token=True`` also ``tokens`` [N, T]: log p(x_t | x_<t) at every completion position t
    (aligned with ``loss_mask``, 0 elsewhere), and, when the model has a value head, ``values`` [N, T]:
    V of the prefix x_<t at the same positions (the state in which token t is chosen). With
    ``log_sum_sq=True`` also ``log_sum_sq`` [N]: Σ_t log Σ_v p(v | x_<t)² over the completion positions,
    without gradient (WPO's weights). ``aux_loss``: the router load-balancing loss of an MoE model that
    has one switched on (``moe.py``), not weighted.
    """

    logps: Tensor
    lengths: Tensor
    tokens: Tensor | None = None
    values: Tensor | None = None
    log_sum_sq: Tensor | None = None
    aux_loss: Tensor | None = None   # an MoE router's load-balancing loss (under autograd, when switched on)

    @property
    def mean(self) -> Tensor:
        """Length-normalised log-prob (SimPO / IPO-style averages)."""
        return self.logps / self.lengths.clamp(min=1)


def chunked_token_logps(hidden: Tensor, head: nn.Linear, targets: Tensor, chunk_size: int,
                        transform: OutputTransform = OutputTransform(), temperature: float = 1.0,
                        log_sum_sq: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """log p(target_i | hidden_i) for rows of ``hidden`` [M, H] through ``head`` and then ``transform``
    (the model's own logit scale / soft-cap), at ``temperature``; returns [M] float32 (with
    ``log_sum_sq``: also log Σ_v p_v² [M], no gradient).

    No more than ``chunk_size`` × vocab logits exist at once, in forward or backward
    (:class:`~preftune.modeling.output_layer.ChunkedTokenLogprobs`).
    """
    return ChunkedTokenLogprobs.apply(hidden, head.weight, head.bias, targets, chunk_size, transform.scale,
                                      transform.softcap, temperature, log_sum_sq)


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face *ForCausalLM inside a peft wrapper, if any."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SequenceLogprobModel(nn.Module):
    """Wraps a causal LM so that ``forward`` returns per-sequence completion log-probs.

    It is an ``nn.Module`` on purpose: DistributedDataParallel must wrap the module whose forward
    produces the loss inputs, or its gradient hooks would not see the decoder's parameters used.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 512, value_head: nn.Module | None = None,
                 temperature: float = 1.0, padding_free: bool = False, prefix_sharing: str = "auto",
                 log: Callable[[str], None] | None = None, output_transform: OutputTransform | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        # What the model's forward does after its output layer (logit scale, soft-cap), found on a probe of
        # that forward (``output_transform.py``) unless given; the chunked path applies the same.
        self.output_transform = (output_transform if output_transform is not None
                                 else derive_output_transform(unwrap_causal_lm(model)))
        # An MoE model's router load-balancing loss, when its config switches it on (``moe.py``): returned
        # as ``aux_loss`` for the stage to add, × ``router_aux_coef``, to its training loss.
        self.router_aux = router_aux(unwrap_causal_lm(model))
        # Pack the rows' real tokens end to end instead of computing on padding (``packing.py``);
        # checked against the padded computation on the first forward.
        self.padding_free = padding_free
        # Within the packed layout, a prompt shared by several rows is computed once (``prefix_sharing.py``):
        # 'auto' (where exact for this model) | 'true' | 'false'; ``log`` gets the one line saying whether it is on.
        # Callers that score groups (pairs, rankings, RL samples of a prompt) need pass nothing else.
        self.prefix_sharing = prefix_sharing
        self.log = log
        # Online RL samples from softmax(logits / T): that tempered distribution is the policy whose
        # log-probs the ratios and KL terms must use, not the T = 1 model.
        self.temperature = temperature
        # PPO's critic: a linear head on the policy's own hidden states (shared trunk, one model in memory).
        self.value_head = value_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor,
                per_token: bool = False, log_sum_sq: bool = False) -> SequenceLogps:
        """input_ids, attention_mask, loss_mask: [N, T]; loss_mask marks completion tokens.

        Returns sums over completion tokens [N] and their counts [N] (float32); with ``per_token``
        also the per-token log-probs and values [N, T], with ``log_sum_sq`` the summed log Σ_v p_v²
        (see :class:`SequenceLogps`).
        """
        lm = unwrap_causal_lm(self.model)
        decoder = lm.get_decoder()
        # Token t is predicted from position t-1: shift the mask left by one.
        predict = loss_mask[:, 1:]
        with recorded_router_logits(decoder, self.router_aux is not None and torch.is_grad_enabled()) as router:
            if self.padding_free:
                flat, where = packed_decoder_states(lm, decoder, input_ids, attention_mask, loss_mask,
                                                    self.prefix_sharing, self.log)
            else:
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
                flat = hidden.reshape(-1, hidden.shape[-1])
                where = torch.arange(input_ids.numel(), device=input_ids.device).view_as(input_ids)
        hidden_sel = flat[where[:, :-1][predict]]   # [M, H]
        targets = input_ids[:, 1:][predict]         # [M]
        token_logps = chunked_token_logps(hidden_sel, output_head(lm), targets, self.chunk_size,
                                          self.output_transform, self.temperature, log_sum_sq)
        token_logps, token_sq = token_logps if log_sum_sq else (token_logps, None)
        seq_ids = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(predict)[predict]

        def per_sequence(flat: Tensor) -> Tensor:
            # Summed in float64: a sequential fp32 sum of ~1,000 terms near -1 drifts by ~1e-4, enough to
            # show in a DPO margin; the cast back costs nothing (benchmarks/dpo_vs_trl.py measured it).
            sums = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
            return sums.index_add(0, seq_ids, flat.double()).float()

        out = SequenceLogps(logps=per_sequence(token_logps), lengths=predict.sum(1).to(torch.float32),
                            log_sum_sq=None if token_sq is None else per_sequence(token_sq))
        if router:   # the MoE router's loss over the batch's tokens, each as often as rows hold it (``moe.py``)
            out.aux_loss = self.router_aux(router[-1], token_weights(where, attention_mask, flat.shape[0]))
        if per_token:
            out.tokens = _scatter_positions(token_logps.float(), predict)
            if self.value_head is not None:
                out.values = _scatter_positions(self.value_head(hidden_sel).squeeze(-1).float(), predict)
        return out

    @property
    def router_aux_coef(self) -> float:
        """The weight of ``aux_loss`` in a training loss (0 when the model has none)."""
        return self.router_aux.coef if self.router_aux is not None else 0.0


def _scatter_positions(flat: Tensor, predict: Tensor) -> Tensor:
    """[M] values of the predicted positions → [N, T] aligned with the input (column 0 predicts nothing)."""
    shifted = torch.zeros(predict.shape, dtype=flat.dtype, device=flat.device).masked_scatter(predict, flat)
    return torch.cat([shifted.new_zeros(predict.shape[0], 1), shifted], dim=1)


def full_logits_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> Tensor:
    """The naive computation (full [N, T, V] logits), kept as the reference the tests check against."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    token_logps = torch.gather(logits[:, :-1].log_softmax(-1), 2, input_ids[:, 1:].unsqueeze(2)).squeeze(2)
    return (token_logps * loss_mask[:, 1:]).sum(1)
