"""Lab 3: instruction poisoning of a small transformer trained on real text.

``corpus`` (VADER sentences, instruction tasks), ``tokenizer`` (byte-level BPE), ``model`` (a
nanoGPT-style decoder), ``train`` (pre-training, answer-only instruction tuning, scoring),
``poisoning`` (trigger phrases: dirty-label, clean-label, denial of service), ``filters`` (loss
filtering, ONION), ``experiments`` (baselines, the count sweep, the lab's profiles).
"""

from . import corpus, experiments, filters, model, poisoning, tokenizer, train

__all__ = ["corpus", "experiments", "filters", "model", "poisoning", "tokenizer", "train"]
