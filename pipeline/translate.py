"""Stage 4: raw text in, detokenised translations out, through a run's tokenizers and best model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from pipeline.artifacts import Run
from pipeline.config import DecodeConfig
from pipeline.data import batched, normalise_space
from pipeline.errors import StageError
from pipeline.progress import log
from pipeline.tokenize import load_tokenizers
from pipeline.vocab import EOS, SIDES, pad, strip

CHUNK = 4096  # sentences sorted by length together; bounds memory on endless input
MAX_PIECE_CHARS = 16  # SentencePiece's longest piece (max_sentencepiece_length's default)
# Batches decoded at once, each from a thread of its own: one batch's many small ops leave a core
# idle that a second batch fills. On 2 cores, 500 test sentences: greedy +25%, beam 5 +21%.
BATCHES_IN_FLIGHT = 2


@dataclass
class Hypothesis:
    text: str
    score: float  # length-normalised log-probability under beam search, else the log-probability
    log_prob: float
    nbest: list[tuple[str, float]] = field(default_factory=list)
    attention: list[list[float]] | None = None  # (target pieces incl. </s>, source pieces incl. </s>)
    src_pieces: list[str] = field(default_factory=list)
    tgt_pieces: list[str] = field(default_factory=list)
    cut: bool = False  # the source was longer than max_input_tokens pieces and was cut to them

    def to_json(self, nbest: bool = False, attention: bool = False) -> dict:
        obj = {"translation": self.text, "score": round(self.score, 4), "log_prob": round(self.log_prob, 4)}
        if nbest:
            obj["nbest"] = [{"translation": t, "score": round(s, 4)} for t, s in self.nbest]
        if attention:
            obj["src_pieces"], obj["tgt_pieces"] = self.src_pieces, self.tgt_pieces
            obj["attention"] = self.attention
        return obj


class Translator:
    """Translates with one model, or an `Ensemble` of several."""

    def __init__(self, model, sp_src: spm.SentencePieceProcessor, sp_tgt: spm.SentencePieceProcessor):
        from pipeline.search import Searcher

        self.model, self.sp_src, self.sp_tgt = model, sp_src, sp_tgt
        self.searcher = Searcher(model)
        self._pool = ThreadPoolExecutor(BATCHES_IN_FLIGHT, thread_name_prefix="decode")

    @classmethod
    def load(cls, runs: Run | Sequence[Run], needed_by: str = "translate") -> "Translator":
        """The best model of one run, or an ensemble of several runs' best models."""
        return cls.of(*load_models(runs, needed_by))

    @classmethod
    def of(cls, processors: dict[str, spm.SentencePieceProcessor], models: list) -> "Translator":
        """A translator of `models` (several: their ensemble) with the runs' tokenizers."""
        from pipeline.ensemble import Ensemble

        return cls(models[0] if len(models) == 1 else Ensemble(models), processors["src"], processors["tgt"])

    def translate(self, lines: Iterable[str], config: DecodeConfig, attention: bool = False) -> Iterator[Hypothesis]:
        """Translate lines in order; an empty line gives an empty hypothesis. Sources longer than
        `config.max_input_tokens` pieces are cut to them, with a warning at the end."""
        return self.translate_batches(batched(lines, CHUNK), config, attention)

    def translate_batches(self, chunks: Iterable[list[str]], config: DecodeConfig,
                          attention: bool = False) -> Iterator[Hypothesis]:
        """`translate`, a chunk of lines at a time: each chunk's translations come out before the
        next chunk is read (`data.stdin_batches` makes chunks of what has arrived)."""
        config.validate()
        cut = 0
        for chunk in chunks:
            for hyp in self._translate_chunk(chunk, config, attention):
                cut += hyp.cut
                yield hyp
        warn_cut(cut, config.max_input_tokens)

    def _translate_chunk(self, lines: list[str], config: DecodeConfig, attention: bool) -> list[Hypothesis]:
        sources = [encode_line(self.sp_src, line, config.max_input_tokens) for line in lines]
        encoded = [ids + [EOS] if ids else [] for ids, _ in sources]
        results: list[Hypothesis | None] = [None] * len(lines)
        order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
        batches = [order[start:start + config.batch_size] for start in range(0, len(order), config.batch_size)]
        # sentences never interact, so batches decoded side by side give what one after another would
        decoded = self._pool.map(lambda batch: self._translate_batch([encoded[i] for i in batch], config, attention),
                                 batches)
        for batch, hyps in zip(batches, decoded):
            for i, hyp in zip(batch, hyps):
                results[i] = hyp
                hyp.cut = sources[i][1]
        return [r if r is not None else Hypothesis("", 0.0, 0.0) for r in results]

    def _translate_batch(self, sources: list[list[int]], config: DecodeConfig, attention: bool) -> list[Hypothesis]:
        src = pad(sources)
        limits = np.array([int(config.max_len_ratio * len(s)) + 10 for s in sources], dtype=np.int32)
        if config.strategy == "beam" and config.beam > 1:
            result = self.searcher.beam(src, limits, config.beam, config.length_penalty,
                                        n_best=config.n_best, attention=attention)
        elif config.strategy == "sample":
            top_k = min(config.top_k, self.sp_tgt.get_piece_size())  # more than the vocabulary: all of it
            result = self.searcher.sample(src, limits, config.temperature, top_k, config.seed,
                                          attention=attention)
        else:  # greedy, and beam of width 1, which length normalisation cannot change
            result = self.searcher.greedy(src, limits, attention=attention)
        tokens, scores, log_probs = result.tokens.numpy(), result.scores.numpy(), result.log_probs.numpy()
        att = result.attention.numpy() if attention else None
        hyps = []
        for i, source in enumerate(sources):
            nbest = [(self.sp_tgt.decode(strip(seq)), float(s)) for seq, s in zip(tokens[i], scores[i])]
            best = strip(tokens[i][0])
            hyp = Hypothesis(nbest[0][0], nbest[0][1], float(log_probs[i][0]), nbest=nbest)
            if att is not None:
                n_out = len(best) + 1  # with </s>
                hyp.attention = np.round(att[i][0][:n_out, :len(source)], 4).tolist()
                hyp.src_pieces = [self.sp_src.id_to_piece(j) for j in source[:-1]] + ["</s>"]
                hyp.tgt_pieces = [self.sp_tgt.id_to_piece(j) for j in best] + ["</s>"]
            hyps.append(hyp)
        return hyps


def load_models(runs: Run | Sequence[Run], needed_by: str) -> tuple[dict[str, spm.SentencePieceProcessor], list]:
    """The tokenizers and best models of one or more runs, which must share the tokenizers."""
    from pipeline.checkpoints import load_best_model

    runs = [runs] if isinstance(runs, Run) else list(runs)
    processors, _ = load_tokenizers(runs[0], needed_by)
    for run in runs[1:]:
        others, _ = load_tokenizers(run, needed_by)
        # the model files also record their training paths, so compare what they encode with
        if any(_vocabulary(others[s]) != _vocabulary(processors[s]) for s in SIDES):
            raise StageError(
                f"{run.root} and {runs[0].root} have different SentencePiece models; "
                "an ensemble needs runs tokenized alike",
                hint=f"tokenize each run with the same data and settings, or copy {runs[0].root}/tokenize",
            )
    return processors, [load_best_model(run, needed_by) for run in runs]


def encode_line(sp: spm.SentencePieceProcessor, line: str, max_tokens: int) -> tuple[list[int], bool]:
    """The pieces of a line (whitespace normalised), cut to `max_tokens`, and whether it was cut.
    Only `max_tokens * MAX_PIECE_CHARS` characters are encoded, so one huge line costs no more."""
    text = normalise_space(line)
    ids = sp.encode(text[:max_tokens * MAX_PIECE_CHARS])
    return ids[:max_tokens], len(text) > max_tokens * MAX_PIECE_CHARS or len(ids) > max_tokens


def warn_cut(lines: int, max_tokens: int) -> None:
    if lines:
        log.warning("%d line(s) longer than %d pieces were cut", lines, max_tokens)


def _vocabulary(sp: spm.SentencePieceProcessor) -> list[tuple[str, float]]:
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
