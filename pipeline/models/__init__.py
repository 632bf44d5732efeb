"""Offline models: the tiny Llamas (``tiny.py``), llama2.c ``tokenizer.bin`` support (``tokenizer_bin.py``) and the
host-side token counter (``count.py``).

Nothing is imported here on purpose: counting tokens (the run stage) must not load the model builders.
"""
