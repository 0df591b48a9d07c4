"""FSDP2: parameters, gradients and optimizer state sharded across torchrun processes.

For full fine-tuning of a model whose weights + AdamW state do not fit one device: each decoder
layer is its own ``fully_shard`` unit (gathered just before its forward/backward, freed after), and
the wrapper that computes sequence log-probs is the root unit (embeddings, final norm, output layer). Gradients are reduce-scattered and averaged over ranks like
DDP's, so the shared loop's arithmetic is unchanged.

Checkpoints are sharded with ``torch.distributed.checkpoint`` (each rank writes its shards); the
saved layout is global, so a run saved by N processes resumes under M. The final model is gathered
into one plain Hugging Face folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from preftune.modeling.layers import decoder_layers


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard(wrapper: nn.Module, lm: nn.Module) -> nn.Module:
    """Shard ``lm``'s decoder layers, then ``wrapper`` (whose forward runs ``lm``) as the root; in place."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(lm):
        fully_shard(layer)
    # The root reshards after forward too (FSDP2's default keeps it gathered): otherwise a forward
    # outside training (the reference precompute, evaluation) leaves the gathered tensors registered
    # as the module's parameters, and an optimizer or clip built from .parameters() then would hold
    # the wrong objects. Costs one more all-gather of embeddings + output layer per step.
    fully_shard(wrapper, reshard_after_forward=True)
    return wrapper


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ over sharded gradients returns a DTensor: the global norm as a plain tensor."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and optimizer state to ``folder`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load shards saved by any number of processes into this run's sharding (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from preftune.train import dcp_safe

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp_safe.load(state, folder)   # never unpickles beyond DCP's own index records
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def gather_full_state(model: nn.Module, prefix: str) -> dict[str, Any]:
    """The unsharded weights on CPU (a collective; every rank gets them), keys without ``prefix``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix(prefix): v for k, v in full.items()}
