"""The architecture matrix's measurements, shared by its tests and by ``python -m tests.architectures.table``.

For one tiny model of each family (``preftune.tiny_architectures``) and one setting, :func:`measure` runs
preftune's per-sequence completion log-probs (``SequenceLogprobModel``) and their gradient, and the same
quantities from the model's own ``forward()`` run on each sequence alone, without padding: logits →
(÷ temperature) → log-softmax → gather the completion tokens → sum. It returns the largest differences.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch._dynamo.utils import counters

from preftune.errors import ConfigError
from preftune.modeling.layers import compile_decoder_layers
from preftune.modeling.lean_layers import make_lean
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.packing import resolve_padding_free
from preftune.testing import tiny_tokenizer
from preftune.tiny_architectures import ARCHITECTURES, tiny_causal_lm

VOCAB = len(tiny_tokenizer())
LENGTHS = (11, 9, 6, 4)          # longer than the sliding windows (4) of the families that have one
COMPLETION = (5, 3, 3, 2)        # completion tokens at the end of each sequence
SHARED_PROMPT = 6                # rows 0 and 1 share their prompt (a preference pair): prefix sharing applies
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Setting:
    """One column of the matrix. ``padding_free`` / ``lean`` / ``prefix_sharing``: True, False or 'auto'
    (the defaults)."""

    name: str
    padding_free: bool | str = "auto"
    lean: bool | str = "auto"
    prefix_sharing: bool | str = "auto"
    chunk_size: int = 512
    temperature: float = 1.0
    compile: bool = False


SETTINGS = {s.name: s for s in (
    Setting("default"),                                   # what a run gets without setting anything
    Setting("padded", padding_free=False, lean=False),    # no optimisation at all
    Setting("packed", padding_free=True, lean=False, prefix_sharing=False),
    Setting("shared", padding_free=True, lean=False, prefix_sharing=True),
    Setting("lean", padding_free=False, lean=True),
    Setting("chunk=3", chunk_size=3),
    Setting("T=0.7", temperature=0.7),
)}
# torch_compile: a minute of inductor compilation per family on 2 cores, so the slow tier's.
COMPILE = Setting("compile", compile=True)


@dataclass
class Measured:
    """``logp``: max |Δ| of per-sequence and per-token log-probs; ``grad``: max |Δ| over every parameter's
    gradient of a random weighting of the sequence log-probs; ``applied``: what the setting became."""

    logp: float
    grad: float
    applied: str


def batch(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=g)
    attention = torch.zeros_like(ids)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, (n, c) in enumerate(zip(LENGTHS, COMPLETION)):
        attention[row, :n] = 1
        loss_mask[row, n - c:n] = True
        ids[row, n:] = 3   # <pad>
    ids[1, :SHARED_PROMPT] = ids[0, :SHARED_PROMPT]
    return ids, attention, loss_mask


_WEIGHTS = torch.linspace(0.5, 1.5, len(LENGTHS))


def plain_reference(model: nn.Module, temperature: float) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Per-token log-probs [N, T] (0 off the completion), per-sequence sums [N] and the gradient of the
    weighted sums, from ``model.forward`` on each sequence alone. ``model`` is left with no gradient."""
    ids, _, loss_mask = batch()
    tokens = torch.zeros(ids.shape, dtype=torch.float64)
    sums = []
    for row, n in enumerate(LENGTHS):
        logits = model(input_ids=ids[row:row + 1, :n], use_cache=False).logits[0].float() / temperature
        logps = logits[:-1].log_softmax(-1).gather(1, ids[row, 1:n, None]).squeeze(1)
        logps = logps * loss_mask[row, 1:n]
        tokens[row, 1:n] = logps.detach().double()
        sums.append(logps.sum())
    (torch.stack(sums) * _WEIGHTS).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return tokens, torch.stack(sums).detach().double(), grads


class Matrix:
    """Builds each architecture once and its plain reference once per temperature."""

    def __init__(self) -> None:
        self._models: dict[str, nn.Module] = {}
        self._references: dict[tuple[str, float], tuple[Tensor, Tensor, dict[str, Tensor]]] = {}

    def model(self, arch: str) -> nn.Module:
        if arch not in self._models:
            self._models[arch] = tiny_causal_lm(arch, VOCAB).eval()
        return copy.deepcopy(self._models[arch])

    def reference(self, arch: str, temperature: float):
        key = (arch, temperature)
        if key not in self._references:
            self._references[key] = plain_reference(self.model(arch), temperature)
        return self._references[key]

    def measure(self, arch: str, setting: Setting) -> Measured:
        """preftune's log-probs and gradients under ``setting`` against the plain per-sequence forward.
        An optimisation the model cannot take is refused when asked for by name (``Measured.applied`` says
        'refused'), and off on auto; both are part of the result."""
        model = self.model(arch)
        applied = []
        if setting.lean is not False:
            counts = make_lean(model)
            took = bool(counts["norms"] or counts["mlps"] or counts["attention"])
            if setting.lean is True and not took:
                return Measured(0.0, 0.0, "lean refused (nothing applies)")
            applied.append(f"lean {counts['norms']}n/{counts['mlps']}m/{counts['attention']}a" if took else "lean off")
        if setting.compile:
            # A fresh compile cache per family: every family's layers run through one transformers function
            # (GradientCheckpointingLayer.__call__), whose recompile limit (8) would leave later families
            # running eager, silently. The graphs compiled for this family are counted into ``applied``.
            torch._dynamo.reset()
            graphs_before = counters["stats"]["unique_graphs"]
            applied.append(f"compiled {compile_decoder_layers(model)} layers")
        try:
            packed = resolve_padding_free(model, setting.padding_free, lambda _: None)
        except ConfigError:
            return Measured(0.0, 0.0, "packing refused")
        sharing = "auto" if setting.prefix_sharing == "auto" or not packed else str(setting.prefix_sharing).lower()
        said: list[str] = []
        wrapped = SequenceLogprobModel(model, setting.chunk_size, temperature=setting.temperature, padding_free=packed,
                                       prefix_sharing=sharing, log=said.append)
        tokens, sums, grads = self.reference(arch, setting.temperature)
        ids, attention, loss_mask = batch()
        try:
            out = wrapped(ids, attention, loss_mask, per_token=True)
        except ConfigError:
            return Measured(0.0, 0.0, "sharing refused")
        applied.append(("shared" if any(s.startswith("prefix sharing: on") for s in said) else "packed") if packed
                       else "padded")
        (out.logps * _WEIGHTS).sum().backward()
        if setting.compile:
            applied.append(f"{counters['stats']['unique_graphs'] - graphs_before} graphs")
        logps, per_token = out.logps.detach().double(), out.tokens.detach().double()
        logp = max(float((logps - sums).abs().max()), float((per_token - tokens).abs().max()))
        grad = 0.0
        for name, p in model.named_parameters():
            expected = grads.get(name)
            got = p.grad if p.grad is not None else torch.zeros_like(p)
            grad = max(grad, float((got - (expected if expected is not None else 0)).abs().max()))
        return Measured(logp, grad, ", ".join(applied))


ARCHS = list(ARCHITECTURES)


# ----------------------------------------------------------------------------------------------------
# Every stage, two optimizer steps, on a saved tiny model of the family

PAIRS = [{"prompt": f"Review number {i}:", "chosen": "good great yes fine", "rejected": "bad awful no"}
         for i in range(8)]


def save_tiny(arch: str, folder) -> str:
    """The tiny model of ``arch`` and the tiny tokenizer, saved as a Hugging Face folder."""
    tokenizer = tiny_tokenizer()
    tiny_causal_lm(arch, len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_stages(model_dir: str, out, *extra: str, reward=None) -> dict[str, object]:
    """sft, dpo, rm and online RL (reinforce, the reward being ``reward`` or else the rm stage's model) for two
    steps each, with default settings and ``extra`` ones (``key=value``); returns each stage's RunResult by
    name."""
    from preftune.config import DPOConfig, RLConfig, RMConfig, SFTConfig, load_config
    from preftune.stages.dpo import run_dpo
    from preftune.stages.reward_model import run_rm
    from preftune.stages.rl import run_rl
    from preftune.stages.sft import run_sft

    common = [f"model_name_or_path={model_dir}", "max_steps=2", "per_device_train_batch_size=2", "threads=1",
              "progress_bar=false", "report_to=none", "max_length=32", "max_prompt_length=16", "save_total_limit=1",
              "logging_steps=1", *extra]
    results: dict[str, object] = {}
    results["sft"] = run_sft(load_config(SFTConfig, None, [*common, f"output_dir={out}/sft", "learning_rate=1e-3"]),
                             train_data=[{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS])
    results["dpo"] = run_dpo(load_config(DPOConfig, None, [*common, f"output_dir={out}/dpo", "learning_rate=1e-3"]),
                             train_data=PAIRS)
    results["rm"] = run_rm(load_config(RMConfig, None, [*common, f"output_dir={out}/rm", "learning_rate=1e-3"]),
                           train_data=PAIRS)
    # The online stages bound completions with max_new_tokens, not max_length.
    rl = [*(c for c in common if not c.startswith("max_length=")), f"output_dir={out}/rl", "algorithm=reinforce",
          f"reward={reward or results['rm'].final_dir}", "max_new_tokens=4", "learning_rate=1e-3"]
    results["rl"] = run_rl(load_config(RLConfig, None, rl), train_data=[{"prompt": p["prompt"]} for p in PAIRS])
    return results
