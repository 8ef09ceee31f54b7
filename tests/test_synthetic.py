"""seqba.data.synthetic: hand-checked English/German renderings, determinism, disjoint splits, the preset."""
import json

import pytest

from seqba.data.prepare import prepare_translation
from seqba.data.synthetic import (date_phrase, english_number, english_ordinal, generate_pairs, german_number,
                                  noun_phrase, price_phrase, time_phrase, write_synthetic_corpus)


@pytest.mark.parametrize("n, en, de", [
    (0, "zero", "null"),
    (1, "one", "eins"),
    (7, "seven", "sieben"),
    (16, "sixteen", "sechzehn"),
    (17, "seventeen", "siebzehn"),
    (21, "twenty-one", "einundzwanzig"),
    (30, "thirty", "dreißig"),
    (67, "sixty-seven", "siebenundsechzig"),
    (100, "one hundred", "einhundert"),
    (101, "one hundred and one", "einhunderteins"),
    (111, "one hundred and eleven", "einhundertelf"),
    (342, "three hundred and forty-two", "dreihundertzweiundvierzig"),
    (1000, "one thousand", "eintausend"),
    (1001, "one thousand and one", "eintausendeins"),
    (1100, "one thousand one hundred", "eintausendeinhundert"),
    (1987, "one thousand nine hundred and eighty-seven", "eintausendneunhundertsiebenundachtzig"),
    (2021, "two thousand and twenty-one", "zweitausendeinundzwanzig"),
    (9999, "nine thousand nine hundred and ninety-nine", "neuntausendneunhundertneunundneunzig"),
    (21000, "twenty-one thousand", "einundzwanzigtausend"),
])
def test_number_words(n, en, de):
    assert english_number(n) == en
    assert german_number(n) == de


def test_number_range_errors():
    with pytest.raises(ValueError, match="0..999999"):
        german_number(-1)
    with pytest.raises(ValueError, match="eins"):
        noun_phrase(101, "apple", "acc")


def test_noun_phrases_gender_case_plural():
    assert noun_phrase(342, "apple", "acc") == ("three hundred and forty-two apples",
                                                "dreihundertzweiundvierzig Äpfel")
    assert noun_phrase(1, "apple", "acc", "red") == ("one red apple", "einen roten Apfel")
    assert noun_phrase(1, "apple", "nom", "red") == ("one red apple", "ein roter Apfel")
    assert noun_phrase(1, "cat", "dat", "old") == ("one old cat", "einer alten Katze")
    assert noun_phrase(1, "book", "acc", "new") == ("one new book", "ein neues Buch")
    assert noun_phrase(3, "dog", "dat") == ("three dogs", "drei Hunden")
    assert noun_phrase(3, "car", "dat", "blue") == ("three blue cars", "drei blauen Autos")
    assert noun_phrase(21, "mouse", "acc", "small") == ("twenty-one small mice", "einundzwanzig kleine Mäuse")
    assert noun_phrase(1, "day", "acc") == ("one day", "einen Tag")


def test_dates_times_prices():
    assert date_phrase(21, 3, 1987) == ("on the 21st of March 1987", "am 21. März 1987")
    assert date_phrase(21, 3, 1987, "us") == ("on March 21, 1987", "am 21. März 1987")
    assert date_phrase(3, 5) == ("on the 3rd of May", "am 3. Mai")
    assert [english_ordinal(d) for d in (1, 2, 3, 4, 11, 12, 13, 22, 31)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "22nd", "31st"]
    assert time_phrase(7, 30) == ("at half past seven", "um halb acht")
    assert time_phrase(12, 30) == ("at half past twelve", "um halb eins")
    assert time_phrase(1, 0) == ("at one o'clock", "um ein Uhr")
    assert time_phrase(4, 45) == ("at a quarter to five", "um Viertel vor fünf")
    assert time_phrase(1, 15) == ("at a quarter past one", "um Viertel nach eins")
    assert time_phrase(6, 40) == ("at twenty to seven", "um zwanzig vor sieben")
    assert time_phrase(18, 5, "digits") == ("at 18:05", "um 18:05 Uhr")
    assert price_phrase(12, 50, "euro") == ("twelve euros and fifty cents", "zwölf Euro und fünfzig Cent")
    assert price_phrase(1, 1, "dollar") == ("one dollar and one cent", "einen Dollar und einen Cent")
    assert price_phrase(1, 0, "pound") == ("one pound", "ein Pfund")
    assert price_phrase(1250, 9, "dollar", "digits") == ("1,250.09 dollars", "1.250,09 Dollar")


def test_pairs_are_short_distinct_and_deterministic():
    pairs = generate_pairs(2000, seed=3)
    assert pairs == generate_pairs(2000, seed=3) and pairs != generate_pairs(2000, seed=4)
    assert len({en for en, _ in pairs}) == len({de for _, de in pairs}) == 2000
    for en, de in pairs:
        assert 5 <= len(en.split()) <= 15 and 5 <= len(de.split()) <= 15, (en, de)
        assert en[0].isupper() and de[0].isupper() and en.endswith(".") and de.endswith(".")


def test_corpus_files_identical_per_seed_and_splits_disjoint(tmp_path):
    a = write_synthetic_corpus(tmp_path / "a", n_train=300, n_valid=50, n_test=50, seed=0)
    b = write_synthetic_corpus(tmp_path / "b", n_train=300, n_valid=50, n_test=50, seed=0)
    assert sorted(a) == ["test.de", "test.en", "train.de", "train.en", "valid.de", "valid.en"]
    assert all(a[name].read_bytes() == b[name].read_bytes() for name in a)
    lines = {name: path.read_text(encoding="utf-8").splitlines() for name, path in a.items()}
    assert len(lines["train.en"]) == len(lines["train.de"]) == 300 and len(lines["test.de"]) == 50
    for lang in ("en", "de"):
        assert not set(lines[f"test.{lang}"]) & set(lines[f"train.{lang}"])
        assert not set(lines[f"valid.{lang}"]) & set(lines[f"train.{lang}"])


def test_synthetic_preset(tmp_path):
    out = prepare_translation(tmp_path / "synth", preset="synthetic", vocab_size=300, synthetic_train=600,
                              synthetic_valid=20, synthetic_test=20)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["splits"]["train"]["sentences"] == 600 and manifest["vocab_size"] == 300
    assert (out / "raw" / "train.en").is_file() and manifest["sources"]["train"]["src"]["path"] == "raw/train.en"
