"""Reward models: a causal LM with a scalar head r_φ(x, y) (docs/maths.md §rlhf.rm), and a scorer for RL.

Where transformers has a sequence-classification class for the model type (Llama, Qwen, Mistral,
GPT-2, ...), the model is a plain Hugging Face ``AutoModelForSequenceClassification`` with one label,
built from a causal-LM folder: the decoder keeps its pretrained weights, the language-model head is
dropped and a new ``score`` head (hidden → 1, no bias) is initialised by transformers (normal, std
``config.initializer_range``, from torch's global RNG, so a seeded run is reproducible). A trained
reward model is then an ordinary folder that ``AutoModelForSequenceClassification.from_pretrained``
loads; its ``config.pad_token_id`` is set from the tokenizer so that plain transformers finds each
row's last real token. For every other causal LM (Cohere, Granite, Gemma 4, Mamba, ...) it is the same
thing built by preftune (``reward_head.py``): the decoder, which plain ``AutoModel`` loads, and the
head in ``reward_head.safetensors``, which :func:`load_reward_model` and the scorer load.

r_φ(x, y) is the head applied to the decoder's hidden state at the LAST completion token of the
sequence prompt + completion (the EOS token, unless the completion was cut by ``max_length``).
:func:`sequence_rewards` computes exactly that and nothing more: the head runs on one hidden state
per row, not on every position, and the position comes from the loss mask, not from guessing which
ids are padding. On right-padded rows it equals what plain transformers returns (tested to 1e-5)
as long as the pad id never occurs inside a sequence; a tokenizer whose pad token is its EOS
(``load_tokenizer`` falls back to that when a tokenizer has no pad token) makes transformers pick
the token *before* the final EOS, so give such tokenizers a separate pad token if plain-transformers
users must get identical numbers.

:class:`RewardModelScorer` scores (prompt, completion) pairs the way training saw them: the same
render → tokenize steps with the data settings the training run saved in ``preftune_reward.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from preftune.data.collate import collate_completions
from preftune.data.load import Record
from preftune.data.render import CompletionText, render_completion
from preftune.data.tokenize import tokenize_completion
from preftune.errors import ConfigError
from preftune.modeling.load import (
    load_tokenizer,
    lora_targets,
    pick_device,
    pretrained_kwargs,
    resolve_model_path,
)
from preftune.modeling.moe import recorded_router_logits, router_aux, token_weights
from preftune.modeling.prefix_sharing import packed_decoder_states
from preftune.modeling.reward_head import ScalarHeadModel, has_sequence_classification, is_head_folder
from preftune.storage import damaged_safetensors

__all__ = [
    "REWARD_SETTINGS_FILE",
    "RewardHeadModel",
    "RewardModelScorer",
    "apply_reward_lora",
    "load_reward_model",
    "read_reward_settings",
    "score_head",
    "sequence_rewards",
    "write_reward_settings",
]

REWARD_SETTINGS_FILE = "preftune_reward.json"
_HEAD_NAMES = ("score", "classifier")  # what transformers' decoder-LM classification models call the head


def load_reward_model(path: str, device: torch.device | str = "cpu", *, num_labels: int = 1,
                      tokenizer: Any = None, dtype: str | torch.dtype | None = "float32",
                      attn_implementation: str | None = None, quantization: str | None = None,
                      **model_init_kwargs: Any) -> nn.Module:
    """A reward model from a causal-LM or reward-model folder, or 'smollm2': transformers'
    ``AutoModelForSequenceClassification`` where it has a class for the model type, else preftune's
    :class:`~preftune.modeling.reward_head.ScalarHeadModel` (the decoder + a scalar head), which is also
    what a folder holding ``reward_head.safetensors`` loads as.

    From a causal LM the head is new and initialised as transformers does (module docstring); from a
    saved reward model it is loaded. ``config.pad_token_id`` is set from the tokenizer (the one in ``path``
    unless given) so the folder this model is saved to works with plain transformers. ``dtype``,
    ``attn_implementation``, ``quantization``, ``model_init_kwargs``: as in ``load.load_causal_lm``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    folder = resolve_model_path(path)
    damaged = damaged_safetensors(Path(folder))
    if damaged:
        raise ConfigError(f"model {path!r}: {damaged}")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(folder)
    kwargs, placed = pretrained_kwargs(device, dtype, attn_implementation, quantization, model_init_kwargs)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised / lm_head unused" is expected here
    try:
        if is_head_folder(folder) or not has_sequence_classification(AutoConfig.from_pretrained(folder)):
            model = ScalarHeadModel.from_folder(folder, num_labels, **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model if placed else model.to(device)


def _unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP and peft wrappers."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(model, RewardHeadModel):
        model = model.model
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def score_head(model: nn.Module) -> nn.Module:
    """The scalar head of a (possibly peft-wrapped) classification model. Under LoRA it is peft's
    ``modules_to_save`` wrapper, whose forward runs the trainable copy."""
    hf = _unwrap(model)
    for name in _HEAD_NAMES:
        head = getattr(hf, name, None)
        if head is not None:
            return head
    raise TypeError(f"{type(hf).__name__} has no classification head named {' or '.join(_HEAD_NAMES)}")


def sequence_rewards(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor,
                     padding_free: bool = False, prefix_sharing: str = "auto",
                     log: Callable[[str], None] | None = None, aux_losses: list[Tensor] | None = None) -> Tensor:
    """r_φ of each row: the head at the row's last completion token (``loss_mask`` marks completion
    tokens; every row needs at least one). ``[N, T]`` inputs → float32 ``[N]``; with gradient when enabled.
    ``padding_free``: run the decoder on the rows packed end to end (``packing.py``), a prompt shared by
    several rows (a pair's) once where ``prefix_sharing`` allows (``prefix_sharing.py``). ``aux_losses``:
    where an MoE model's router load-balancing loss is appended, under autograd, when its config has it on.
    """
    hf = _unwrap(model)
    decoder = getattr(hf, hf.base_model_prefix)
    aux = router_aux(hf) if aux_losses is not None and torch.is_grad_enabled() else None
    with recorded_router_logits(decoder, aux is not None) as router:
        if padding_free:
            flat, where = packed_decoder_states(hf, decoder, input_ids, attention_mask, loss_mask, prefix_sharing,
                                                log)
        else:
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            flat = hidden.reshape(-1, hidden.shape[-1])
            where = torch.arange(input_ids.numel(), device=input_ids.device).view_as(input_ids)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(loss_mask)
    last = torch.where(loss_mask.bool(), positions, -1).amax(1)
    if bool((last < 0).any()):
        raise ValueError("sequence_rewards: a row has no completion token (loss_mask is all False)")
    if router:
        aux_losses.append(aux(router[-1], token_weights(where, attention_mask, flat.shape[0])))
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return score_head(model)(flat[where[rows, last]]).squeeze(-1).float()


class RewardHeadModel(nn.Module):
    """``forward(input_ids, attention_mask, loss_mask) -> rewards [N]``: :func:`sequence_rewards` as a
    module, so DistributedDataParallel wraps the module whose forward produces the loss inputs. An MoE
    model's router losses of the forwards since the last :meth:`take_aux_losses` are kept for the stage."""

    def __init__(self, model: nn.Module, padding_free: bool = False, prefix_sharing: str = "auto",
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.model = model
        self.padding_free = padding_free
        self.prefix_sharing = prefix_sharing
        self.log = log
        self.aux_losses: list[Tensor] = []
        aux = router_aux(_unwrap(model))
        self.router_aux_coef = aux.coef if aux is not None else 0.0

    def forward(self, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> Tensor:
        return sequence_rewards(self.model, input_ids, attention_mask, loss_mask, self.padding_free,
                                self.prefix_sharing, self.log, self.aux_losses)

    def take_aux_losses(self) -> list[Tensor]:
        taken, self.aux_losses = self.aux_losses, []
        return taken


def apply_reward_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | None
                      ) -> nn.Module:
    """LoRA adapters on the decoder, the new head trained in full.

    ``modeling.load.apply_lora`` uses peft's CAUSAL_LM task, which on a classification model would
    leave the freshly initialised head frozen (and, with 'all-linear', put an adapter on it). Here the
    task is SEQ_CLS: 'all-linear' skips the head and peft keeps a trainable copy of it
    (``modules_to_save``), which ``merge_and_unload`` puts back in place of the original.
    """
    from peft import LoraConfig, get_peft_model

    head = next(n for n in _HEAD_NAMES if getattr(_unwrap(model), n, None) is not None)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(_unwrap(model), target_modules),
                        task_type="SEQ_CLS", modules_to_save=[head])
    return get_peft_model(model, config)


# ----------------------------------------------------------------------------------------------------
# The data settings a reward model was trained with, and scoring with them


def write_reward_settings(folder: str | Path, settings: dict[str, Any]) -> Path:
    """Write ``preftune_reward.json`` (max_length, max_prompt_length, use_chat_template, ...) into ``folder``."""
    path = Path(folder) / REWARD_SETTINGS_FILE
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def read_reward_settings(folder: str | Path) -> dict[str, Any]:
    """The saved settings, or ``{}`` for a folder not written by ``preftune rm``."""
    path = Path(folder) / REWARD_SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class RewardModelScorer:
    """``scorer(prompts, completions) -> list[float]``: r_φ(x, y) from a reward-model folder.

    Each pair is rendered (chat template or not) and tokenized exactly as the reward-model stage
    rendered its training pairs, with the ``max_length`` / ``max_prompt_length`` / ``use_chat_template``
    saved in the folder's ``preftune_reward.json``; an argument given here overrides the saved value,
    and a folder without that file uses the training defaults (512, 256, template iff the tokenizer
    has one). Prompts are strings or message lists; completions are strings (an empty completion
    scores its lone EOS). Completions longer than the budget are cut from the right, as in training.
    """

    def __init__(self, path: str, device: torch.device | str = "cpu", *, batch_size: int = 32,
                 max_length: int | None = None, max_prompt_length: int | None = None,
                 use_chat_template: bool | None = None) -> None:
        folder = resolve_model_path(path)
        saved = read_reward_settings(folder)
        self.device = pick_device(device) if isinstance(device, str) else device
        self.batch_size = batch_size
        self.max_length = max_length if max_length is not None else saved.get("max_length", 512)
        self.max_prompt_length = (max_prompt_length if max_prompt_length is not None
                                  else saved.get("max_prompt_length", 256))
        self.use_chat_template = (use_chat_template if use_chat_template is not None
                                  else saved.get("use_chat_template"))
        self.tokenizer = load_tokenizer(folder)
        self.model = load_reward_model(folder, self.device, tokenizer=self.tokenizer).eval()

    def tokenize(self, prompt: Any, completion: str, origin: str):
        if completion == "":
            # render_completion rejects empty fields (training data never has them), but a policy may
            # stop at once: score the completion's EOS alone, rendered as the template renders it.
            if isinstance(prompt, str) and not self._templated():
                text = CompletionText(prompt, "", origin)
            else:
                text = self._render(prompt, [{"role": "assistant", "content": ""}], origin)
        else:
            text = self._render(prompt, completion, origin)
        return tokenize_completion(text, self.tokenizer, max_length=self.max_length,
                                   max_prompt_length=self.max_prompt_length)

    def _templated(self) -> bool:
        if self.use_chat_template is None:
            return bool(getattr(self.tokenizer, "chat_template", None))
        return self.use_chat_template

    def _render(self, prompt: Any, completion: Any, origin: str) -> CompletionText:
        record = Record({"prompt": prompt, "completion": completion}, origin)
        # A policy's sample may spell "<|im_end|>" out of ordinary tokens; an RL run must score it, not stop.
        return render_completion(record, self.tokenizer, use_chat_template=self.use_chat_template,
                                 allow_special_tokens=True)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        examples = [self.tokenize(p, c, f"reward[{i}]") for i, (p, c) in enumerate(zip(prompts, completions))]
        out: list[float] = []
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start:start + self.batch_size]
            batch = collate_completions(chunk, list(range(len(chunk))), pad_token_id=self.tokenizer.pad_token_id)
            batch = batch.to(self.device)
            out += sequence_rewards(self.model, batch.input_ids, batch.attention_mask, batch.loss_mask).tolist()
        return out
