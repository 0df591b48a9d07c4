"""Step 2: turn a raw record into the exact prompt and completion *strings* the model will see.

One module per layout, by what it renders: :mod:`.preference` (pairs), :mod:`.completion` (SFT examples),
:mod:`.unpaired` (KTO's judged completions) and :mod:`.ranking` (ranked lists). They follow one set of rules,
below, whose helpers live in :mod:`preftune.data.fields`.

Rendering is kept apart from tokenization so that the chat template is applied in exactly one
place. With a chat template the completion is defined as ``full[len(prompt):]`` where ``prompt``
is the conversation rendered with the generation prompt and ``full`` the conversation including
the answer; this is only sound if the template renders the former as a prefix of the latter
(the *prompt-prefix invariant*), which is checked for every example rather than assumed
(:mod:`preftune.data.fields`).

Text fields must be valid Unicode and must not spell a special token where the tokenizer would
read it as a control token (see :mod:`preftune.data.special_tokens`); an empty string field is an
error. Whitespace-only text is kept: it may be the intended answer (code, formatting), and it
still encodes to at least one token. (An answer *message* with empty content renders to the EOS
alone; the dataset builders reject that for training data, while the reward scorer uses it on
purpose to score a policy that stopped at once.) Where the prompt lives inside the completions
(hh-rlhf strings, conversations, H4's repeated user turn) see :mod:`preftune.data.implicit_prompt`.
"""

from preftune.data.render.completion import CompletionText, render_completion
from preftune.data.render.preference import PreferenceText, render_preference
from preftune.data.render.ranking import RankingText, render_ranking
from preftune.data.render.unpaired import UnpairedText, render_unpaired

__all__ = ["CompletionText", "PreferenceText", "RankingText", "UnpairedText", "render_completion",
           "render_preference", "render_ranking", "render_unpaired"]
