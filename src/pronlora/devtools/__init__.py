"""Tools for developers and benchmarks; no stage imports them.

Random-weight checkpoints in the Hub's formats (with the offline o200k tokenizer), the synthetic
demo corpus, and the benchmark drivers that run the stages' public functions.
"""
