"""nmt-pipeline: neural machine translation from the shell and from Python.

    import pipeline
    translator = pipeline.load("saved_models/enja")      # a trained run; a list of runs ensembles them
    translator.translate(["彼 は 走 っ た 。"], beam=5)[0].text

See `pipeline.api` for the Python interface, `cli.py` for the commands.
"""

import os

__version__ = "0.10.0"

# oneDNN's kernels for TensorFlow's CPU ops, whatever the CPU: TensorFlow turns them on by itself
# only on CPUs with AVX512 (VNNI, BF16, AMX), not on AVX2-only ones such as this project's 2-core
# machines, where training ran 1.31-1.53x faster with them (BENCHMARKS.md, "oneDNN"). Read when
# TensorFlow loads, so set here, before it does; a value the user set wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def load(runs):
    """A trained run (or a list of runs, ensembled) ready to translate and score: `pipeline.api.load`."""
    from pipeline.api import load as _load  # TensorFlow is imported only when a model is loaded

    return _load(runs)
