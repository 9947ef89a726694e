"""nmt-pipeline: neural machine translation from the shell and from Python.

    import pipeline
    translator = pipeline.load("saved_models/enja")      # a trained run; a list of runs ensembles them
    translator.translate(["彼 は 走 っ た 。"], beam=5)[0].text

See `pipeline.api` for the Python interface, `cli.py` for the commands.
"""

__version__ = "0.10.0"


def load(runs):
    """A trained run (or a list of runs, ensembled) ready to translate and score: `pipeline.api.load`."""
    from pipeline.api import load as _load  # TensorFlow is imported only when a model is loaded

    return _load(runs)
