"""How well the pretrain stage's word2vec fits held-out text, beside gensim's on the same pieces:
the skip-gram negative-sampling loss per (centre, context) pair of a held-out file (nats; lower is
better), every context within `window`, `negatives` noise words per pair drawn once from the
training pieces' unigram distribution to the 0.75, the same draws for every model scored.

    python benchmarks/w2v_heldout.py --run RUN --side src --held-out data/small_parallel_enja/dev.ja

RUN is a run whose tokenize stage finished; the word2vec settings are the pretrain stage's defaults.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's packages

import numpy as np  # noqa: E402
import typer  # noqa: E402

from benchmarks.bench import command, table  # noqa: E402
from pipeline.artifacts import Run  # noqa: E402
from pipeline.config import PretrainConfig  # noqa: E402
from pipeline.data import read_lines  # noqa: E402
from pipeline.tokenize import load_encoded, load_tokenizers  # noqa: E402
from pipeline.vocab import FIRST_WORD  # noqa: E402
from pipeline.word2vec import NOISE_POWER, train  # noqa: E402


def heldout_loss(inputs: np.ndarray, outputs: np.ndarray, centres: np.ndarray, contexts: np.ndarray,
                 noise: np.ndarray) -> float:
    """Mean of -log s(u_centre . v_context) - sum over noise n of log s(-u_n . v_context)."""
    v = inputs[contexts]
    positive = np.logaddexp(0, -np.sum(outputs[centres] * v, axis=1))
    negative = np.logaddexp(0, np.einsum("pd,pkd->pk", v, outputs[noise])).sum(axis=1)
    return float(np.mean(positive + negative))


def main(run: Path = typer.Option(...), side: str = typer.Option("src"), held_out: Path = typer.Option(...),
         seeds: str = typer.Option("1,2,3", help="The project's seeds (gensim runs once, seed 1)."),
         gensim: bool = typer.Option(True, help="Also train gensim's word2vec (if installed).")):
    """Held-out skip-gram loss of the project's word2vec (over seeds) and gensim's, same pieces."""
    config, the_run = PretrainConfig(), Run.at(run)
    sp = load_tokenizers(the_run, needed_by="w2v_heldout")[0][side]
    chunks = list(load_encoded(the_run, needed_by="w2v_heldout").chunks(side, 1 << 16))
    vocab = sp.get_piece_size()
    counts = sum(np.bincount(ids, minlength=vocab)[:vocab] for ids, _ in chunks).astype(np.float64)
    counts[:FIRST_WORD] = 0
    centres, contexts = [], []
    for line in read_lines(held_out):
        ids = np.array([i for i in sp.encode(line) if i >= FIRST_WORD])
        for i in range(len(ids)):
            for j in range(max(0, i - config.window), min(len(ids), i + config.window + 1)):
                if j != i:
                    centres.append(ids[i]), contexts.append(ids[j])
    noise_p = counts ** NOISE_POWER / np.sum(counts ** NOISE_POWER)
    noise = np.random.default_rng(0).choice(vocab, size=(len(centres), config.negatives), p=noise_p)
    pairs = (np.array(centres), np.array(contexts), noise)
    rows = []
    for seed in map(int, seeds.split(",")):
        result = train(lambda: iter(chunks), vocab, config, seed=seed, name=side)
        rows.append([f"project, seed {seed}", f"{heldout_loss(result.vectors, result.output_vectors, *pairs):.4f}"])
    if gensim:
        from gensim.models import Word2Vec

        sentences = [[str(i) for i in ids[start:start + n] if i >= FIRST_WORD] for ids, lengths in chunks
                     for start, n in zip(np.cumsum(lengths) - lengths, lengths)]
        model = Word2Vec(sentences, sg=1, vector_size=config.dim, window=config.window, negative=config.negatives,
                         sample=config.subsample, min_count=1, workers=2, epochs=config.epochs, seed=1)
        inputs, outputs = (np.zeros((vocab, config.dim), np.float32) for _ in range(2))
        for key, i in model.wv.key_to_index.items():
            inputs[int(key)], outputs[int(key)] = model.wv.vectors[i], model.syn1neg[i]
        rows.append(["gensim, seed 1, 2 workers", f"{heldout_loss(inputs, outputs, *pairs):.4f}"])
    print(f"{side}, {len(centres):,} held-out pairs from {held_out}")
    print("\n".join(table(["model", "held-out loss (nats a pair)"], rows)))


if __name__ == "__main__":
    command(main)
