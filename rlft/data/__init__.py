"""Datasets: prompt sources and splits (:mod:`rlft.data.prompts`), preference data
(:mod:`rlft.data.preference`) and built-in generated tasks (:mod:`rlft.data.tasks`)."""

from rlft.data.prompts import PromptRows, PromptSampler, has_eval_split, load_prompt_rows

__all__ = ["PromptRows", "PromptSampler", "has_eval_split", "load_prompt_rows"]
