"""The reference policy π_ref, in four interchangeable forms.

- ``FrozenReference``: a separate frozen copy, run every step (any reference model); with TR-DPO
  (``sync_ref_model``) moved towards the policy every few steps by :func:`mix_into`.
- ``AdapterDisabledReference``: the policy itself with its LoRA adapter switched off: one set of
  base weights in memory serves as both policy and reference.
- ``NoReference``: none at all, for reference-free losses (SimPO, ORPO).
- ``PrecomputedReference``: log-probs computed once before training, looked up by example index,
  and cached on disk under a key of everything that changes them (:func:`cache_key`: the reference
  model's weights, full config and attention implementation, the tokenizer, the tokenized data, the
  precision). A frozen reference gives the same numbers every epoch, so recomputing it each step is
  pure waste. The cache file is safetensors with its sha256 beside it (``preftune.assets.cache``): a
  damaged one is reported and recomputed, one that cannot be written is a warning.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from preftune.assets.cache import read_verified, write_verified
from preftune.data.collate import Rows
from preftune.modeling.logprobs import SequenceLogprobModel, SequenceLogps

CACHE_FORMAT = 2

# How a forward over rows (run per token) reduces to the per-row value a loss reads, when that is not the
# plain sum (LD-DPO's weighted sum); supplied by the objective, applied alike to π_θ and π_ref.
RowReduce = Callable[[Rows, SequenceLogps], Tensor]


def _score(model: SequenceLogprobModel, rows: Rows, reduce: RowReduce | None) -> Tensor:
    out = model(rows.input_ids, rows.attention_mask, rows.loss_mask, per_token=reduce is not None)
    return out.logps if reduce is None else reduce(rows, out)


class FrozenReference:
    """A separate frozen model, run on every batch. Called with :class:`~preftune.data.collate.Rows`,
    returns their summed completion log-probs [R] (or ``reduce``'s value per row)."""

    def __init__(self, logprob_model: SequenceLogprobModel, reduce: RowReduce | None = None) -> None:
        self.model = logprob_model
        self.reduce = reduce

    @torch.no_grad()
    def __call__(self, rows: Rows) -> Tensor:
        return _score(self.model, rows, self.reduce)


class AdapterDisabledReference:
    """``policy`` is the (unwrapped) SequenceLogprobModel around a peft model."""

    def __init__(self, policy: SequenceLogprobModel, reduce: RowReduce | None = None) -> None:
        if not hasattr(policy.model, "disable_adapter"):
            raise TypeError("AdapterDisabledReference needs a peft (LoRA) model")
        self.policy = policy
        self.reduce = reduce

    @torch.no_grad()
    def __call__(self, rows: Rows) -> Tensor:
        was_training = self.policy.training
        self.policy.eval()  # LoRA dropout is bypassed anyway; eval keeps any base-model dropout off
        with self.policy.model.disable_adapter():
            out = _score(self.policy, rows, self.reduce)
        self.policy.train(was_training)
        return out


@torch.no_grad()
def mix_into(reference: nn.Module, policy: nn.Module, alpha: float) -> None:
    """TR-DPO's soft update of the reference (Gorbatovski et al. 2024, "Learn Your Reference Model for Real
    Good Alignment"), in place: θ_ref ← α θ + (1 − α) θ_ref for every parameter, as TRL's sync does.
    ``reference`` and ``policy`` are the same architecture (same parameters, in the same order)."""
    pairs = list(zip(reference.parameters(), policy.parameters(), strict=True))
    for ref, new in pairs:
        if ref.shape != new.shape:
            raise ValueError(f"reference and policy parameters differ in shape ({tuple(ref.shape)} vs "
                             f"{tuple(new.shape)}): sync_ref_model needs the same architecture")
    for ref, new in pairs:
        ref.mul_(1.0 - alpha).add_(new.detach().to(ref.dtype), alpha=alpha)


class NoReference:
    """For losses that never read π_ref (SimPO, ORPO): log π_ref ≡ 0, so the reported implicit rewards
    become β log π_θ and no reference model is loaded or run."""

    def __call__(self, rows: Rows) -> Tensor:
        return torch.zeros(len(rows), device=rows.input_ids.device)


class PrecomputedReference:
    def __init__(self, table: Tensor) -> None:
        """``table``: [num_examples, num_columns] float32; a pair's columns are (chosen, rejected)."""
        self.table = table

    def __call__(self, rows: Rows) -> Tensor:
        return self.table[rows.example.to(self.table.device), rows.column.to(self.table.device)]


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over parameter names and bytes (LoRA weights excluded: they are not the reference)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        if hasattr(tensor, "full_tensor"):  # an FSDP shard: hash the whole tensor (every rank calls this)
            tensor = tensor.full_tensor()
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# Config entries that record where or when a model was saved, or how it is run, but change no number.
_BOOKKEEPING = ("_name_or_path", "transformers_version", "use_cache", "output_router_logits")


def model_fingerprint(lm: nn.Module) -> dict[str, str]:
    """Everything about a loaded model that decides its log-probs: the weights (their bytes, hence their
    dtype), the full config (every architecture field: rope, windows, scales, ...; not where or when it was
    saved), the attention implementation and the transformers version that runs it. ``lm``: the causal LM
    (unwrapped from peft; an FSDP-sharded one is gathered, a collective)."""
    import transformers

    from preftune.modeling.lean_layers import ATTENTION

    config = {k: v for k, v in lm.config.to_dict().items() if k not in _BOOKKEEPING}
    # Prefix sharing wraps the implementation it found (its layout is checked against it on a probe).
    attention = str(getattr(lm.config, "_attn_implementation", None)).removeprefix("preftune_shared_")
    return {
        "weights": weights_fingerprint(lm),
        "config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        # The lean layers' grouped-query SDPA computes transformers' SDPA (checked on a probe).
        "attention": "sdpa" if attention == ATTENTION else attention,
        "transformers": transformers.__version__,
    }


def cache_key(model: dict[str, str], tokenizer: str, data: str, precision: str) -> str:
    """The reference cache's key: a cached table is reused only when every input that changes a reference
    log-prob is the same — the model (:func:`model_fingerprint`), the tokenizer (vocabulary, special tokens,
    chat template), the tokenized data and its settings (``BuiltDataset.fingerprint``), and the precision
    (bf16 autocast or not). Chunking, packing and lean layers compute the same numbers and are left out."""
    payload = json.dumps({"format": CACHE_FORMAT, "model": model, "tokenizer": tokenizer, "data": data,
                          "precision": precision}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def precompute_reference(
    compute: Callable[[list[int]], Iterable[tuple[Rows, Tensor]]],
    num_examples: int,
    *,
    num_columns: int = 2,
    batch_size: int,
    cache_file: Path | None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Callable[[Tensor], Tensor] = lambda t: t,
    log: Callable[[str], None] = print,
    desc: str = "reference",
) -> Tensor:
    """A [num_examples, num_columns] table of reference log-probs; from ``cache_file`` when it exists.

    ``compute(indices)`` scores those examples and yields (rows, log-probs [R]) pairs; each value
    lands at (rows.example, rows.column). Entries no row fills (the unused tail of a short ranked
    list) stay 0 and are never read. Under torchrun each rank scores a strided shard and the shards
    are summed into the full table on every rank.
    """
    if cache_file is not None:
        table = read_verified(cache_file, _read_table, f"{desc} log-probs", log)
        if table is not None and table.shape == (num_examples, num_columns):
            log(f"{desc} log-probs: cache hit ({cache_file})")
            return table
        if table is not None:
            log(f"{desc} log-probs: cache file {cache_file} has the wrong shape; recomputing")
    start = time.perf_counter()
    table = torch.zeros(num_examples, num_columns, dtype=torch.float32)
    mine = list(range(rank, num_examples, world_size))
    for i in range(0, len(mine), batch_size):
        for rows, logps in compute(mine[i:i + batch_size]):
            table[rows.example.cpu(), rows.column.cpu()] = logps.float().cpu()
    table = all_reduce(table)
    seconds = time.perf_counter() - start
    if cache_file is not None and rank == 0 and write_verified(cache_file, lambda tmp: _write_table(table, tmp), log):
        log(f"{desc} log-probs: computed {num_examples} examples in {seconds:.1f}s, cached at {cache_file}")
    else:
        log(f"{desc} log-probs: computed {num_examples} examples in {seconds:.1f}s")
    return table


def _read_table(path: Path) -> Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["logps"]


def _write_table(table: Tensor, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"logps": table.contiguous()}, str(path))
