"""Normalised answer comparison: the acceptance test of synthesised tools and of rewards.

One implementation, in the reward module (:mod:`astra.servers._rewards`): two answers match
when they are the same value after normalisation, never when one merely contains the other;
a tool result holds a sub-answer when one of its leaf values matches it
(:func:`answer_in_result`).
"""

from astra.servers._rewards import answer_in_result, answers_match, normalize_text, parse_tool_value

__all__ = ["answer_in_result", "answers_match", "normalize_text", "parse_tool_value"]
