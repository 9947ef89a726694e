"""Corpus reading: TSV columns, whitespace, language guesses from file names."""

from __future__ import annotations

import pytest

from pipeline.data import guess_lang, normalise_space, read_tsv
from pipeline.errors import InputError


@pytest.mark.parametrize("src_col,tgt_col,message", [
    (-1, 0, "TSV columns count from 0; got source column -1, target column 0"),
    (1, 1, "source and target are both TSV column 1; give two different columns"),
])
def test_tsv_refuses_negative_or_equal_columns(tmp_path, src_col, tgt_col, message):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("Hi.\tやあ。\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        list(read_tsv(tsv, src_col, tgt_col))
    assert error.value.message == message


def test_normalise_space_folds_every_kind_of_whitespace():
    assert normalise_space("  a\tb\u3000c\u2028d  \r") == "a b c d"


@pytest.mark.parametrize("path,expected", [
    ("data/train.ja", "ja"), ("train.en", "en"), ("corpus.jpn", "jpn"),
    ("saved_models/x/split/train.src", "ja"), ("split/dev.tgt", "ja"), ("jpn.txt", "ja"), ("pairs.tsv", "ja"),
    ("train", "ja"), (None, "ja"),
])
def test_guess_lang_ignores_suffixes_that_are_not_languages(path, expected):
    assert guess_lang(path, "ja") == expected
