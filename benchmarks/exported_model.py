"""The exported SavedModel's side of speed.py's export section, run as `python -I exported_model.py SPEC`:
only TensorFlow and tensorflow-text, never the project's code. SPEC (JSON) names the export, the
lines, the batch size and the searches; on stdout, JSON: import and load times, and for each search
the first pass, the median of the repeats after it and the translations."""

import json
import statistics
import sys
import time

started = time.perf_counter()
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  registers the SentencePiece ops

imported = time.perf_counter()
spec = json.load(open(sys.argv[1], encoding="utf-8"))
model = tf.saved_model.load(spec["export"])
figures = {"import_s": imported - started, "load_s": time.perf_counter() - imported}
lines, size = spec["lines"], spec["batch_size"]
order = sorted(range(len(lines)), key=lambda i: len(lines[i]))  # batched by length, as translate batches


def translate(signature: str, extra: dict) -> list[str]:
    out = [""] * len(lines)
    for start in range(0, len(order), size):
        batch = order[start:start + size]
        result = model.signatures[signature](sentences=tf.constant([lines[i] for i in batch]), **extra)
        for i, text in zip(batch, result["translations"].numpy()):
            out[i] = text.decode("utf-8")
    return out


def timed(signature: str, extra: dict) -> tuple[float, list[str]]:
    started = time.perf_counter()
    texts = translate(signature, extra)
    return time.perf_counter() - started, texts


for name, signature, beam in spec["searches"]:
    extra = {"beam": tf.constant(beam), "length_penalty": tf.constant(spec["length_penalty"])} if beam else {}
    first_s, texts = timed(signature, extra)
    seconds = [timed(signature, extra)[0] for _ in range(spec["repeats"])]
    figures[name] = {"first_pass_s": first_s, "steady_s": statistics.median(seconds), "translations": texts}
print(json.dumps(figures))
