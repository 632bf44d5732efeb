"""Offline tiny models (tiny-fp/w8/w4/w2/random) and llama2.c tokenizer.bin support.

Imports are lazy (torch/transformers load only when a model is built or evaluated).
"""

from pipeline.models.tiny import MODEL_NAMES, TinyModelError, build_model, evaluate, load_examples
from pipeline.models.tokenizer_bin import TokenizerBin, TokenizerBinError, export_tokenizer_bin

__all__ = ["MODEL_NAMES", "TinyModelError", "TokenizerBin", "TokenizerBinError", "build_model", "evaluate",
           "export_tokenizer_bin", "load_examples"]
