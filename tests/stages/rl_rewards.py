"""Programmatic rewards for the RL tests, importable as ``tests.stages.rl_rewards:<name>``."""


def letter_e_rate(prompts, completions):
    """The fraction of a completion's characters that are 'e': dense enough for a random tiny model to
    find signal in a few rollouts, and checkable by eye."""
    return [text.count("e") / max(len(text), 1) for text in completions]


def letter_e_count(prompts, completions):
    """How many 'e' a completion holds: a reward that keeps growing as the policy drifts, so only the KL
    penalty stops it (what the adaptive-KL test needs)."""
    return [float(text.count("e")) for text in completions]
