"""A scalar reward head on any causal LM's decoder, for the model types transformers has no
``AutoModelForSequenceClassification`` class for (Cohere, Granite, Gemma 4, Mamba, LFM2, ...).

:class:`ScalarHeadModel` is the decoder (``AutoModel``: the causal LM without its output layer) plus a
``score`` layer hidden → num_labels without bias, initialised as transformers initialises its
classification heads (normal, std ``config.initializer_range``, from torch's global RNG). It exposes what
preftune's reward code reads from a transformers classification model — ``base_model_prefix``, the
trunk under that name, ``score``, ``config`` — so training, LoRA, checkpoints and the scorer treat both
alike.

Saved, it is an ordinary ``AutoModel`` folder (the decoder, loadable by plain transformers) plus
``reward_head.safetensors`` holding the head's weight [num_labels, hidden]; r(x, y) is that weight
applied to the decoder's hidden state at the last completion token. :func:`is_head_folder` tells such
a folder apart; ``preftune.modeling.reward_model.load_reward_model`` loads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

HEAD_FILE = "reward_head.safetensors"


def has_sequence_classification(config: Any) -> bool:
    """Whether transformers ships an ``AutoModelForSequenceClassification`` class for ``config``'s model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    return config.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES


def is_head_folder(folder: str | Path) -> bool:
    return (Path(folder) / HEAD_FILE).is_file()


class ScalarHeadModel(nn.Module):
    """A causal LM's decoder ``model`` and a scalar head ``score`` (module docstring)."""

    base_model_prefix = "model"

    def __init__(self, decoder: nn.Module, num_labels: int = 1) -> None:
        super().__init__()
        self.model = decoder
        self.config = decoder.config
        weight = next(decoder.parameters())
        hidden = self.config.get_text_config().hidden_size
        self.score = nn.Linear(hidden, num_labels, bias=False, device=weight.device, dtype=weight.dtype)
        nn.init.normal_(self.score.weight, std=getattr(self.config.get_text_config(), "initializer_range", 0.02))
        self.config.num_labels = num_labels

    @classmethod
    def from_folder(cls, folder: str | Path, num_labels: int = 1, **from_pretrained_kwargs: Any) -> ScalarHeadModel:
        """The decoder of the causal LM or head folder ``folder``; its saved head if there is one, else a new one."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        decoder = AutoModel.from_pretrained(str(folder), **from_pretrained_kwargs)
        model = cls(decoder, num_labels)
        if is_head_folder(folder):
            weight = load_file(str(Path(folder) / HEAD_FILE))["weight"]
            if weight.shape != model.score.weight.shape:
                raise ValueError(f"{Path(folder) / HEAD_FILE}: a head of shape {tuple(weight.shape)}, expected "
                                 f"{tuple(model.score.weight.shape)}")
            with torch.no_grad():
                model.score.weight.copy_(weight)
        return model

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        """The decoder as a plain transformers folder, and the head beside it."""
        from safetensors.torch import save_file

        state_dict = kwargs.pop("state_dict", None)
        if state_dict is not None:   # a full state dict (e.g. gathered): split it into trunk and head
            kwargs["state_dict"] = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        self.model.save_pretrained(folder, **kwargs)
        head = state_dict["score.weight"] if state_dict is not None else self.score.weight
        save_file({"weight": head.detach().cpu().contiguous()}, str(Path(folder) / HEAD_FILE))

    def get_decoder(self) -> nn.Module:
        return self.model

    def set_attn_implementation(self, implementation: str) -> None:
        self.model.set_attn_implementation(implementation)

    # Gradient checkpointing is the decoder's (the head is one matmul on one hidden state per row).
    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.model.gradient_checkpointing_enable(**kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None) -> None:
        enable = getattr(self.model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)

    def enable_input_require_grads(self) -> None:
        self.model.enable_input_require_grads()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
                ) -> torch.Tensor:
        """Scores of every position [N, T, num_labels] (preftune's own code reads one position per row:
        ``reward_model.sequence_rewards``)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.score(hidden)
