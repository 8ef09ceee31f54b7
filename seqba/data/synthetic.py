"""A deterministic synthetic English -> German corpus (no download): numbers, dates, times, prices, counted nouns.

Sentences come from 14 templates over a lexicon of about 150 words per language plus numbers, dates and
times (50,000 pairs hold about 500 English word types without digits; German has about 5,000, nearly all
compound number words, which a 1,000-piece SentencePiece model splits into hundert/tausend/und... pieces).
They are short (5 to 15 words on both sides) but the mapping is non-trivial:

- number words: "three hundred and forty-two" -> "dreihundertzweiundvierzig" (units before tens, one word);
  "eins" alone and at the end ("einhunderteins"), "ein" before hundert/tausend/Uhr ("eintausend", "ein Uhr")
- counted nouns with gender, case and plural: "one red apple" -> "einen roten Apfel" (accusative),
  "with three dogs" -> "mit drei Hunden" (dative plural -n), "three red apples" -> "drei rote Äpfel"
- dates and times: "on the 21st of March 1987" / "on March 21, 1987" -> "am 21. März 1987";
  "at half past seven" -> "um halb acht" (the next hour); "at 18:30" -> "um 18:30 Uhr"
- prices: "4.99 euros" -> "4,99 Euro", "1,250 dollars" -> "1.250 Dollar", "one euro" -> "einen Euro"
- word order: verb second after a fronted adverbial ("Am Montag essen wir ..."), participles and separable
  particles at the end ("Ich habe am 3. Mai 2001 drei Bücher gekauft."), verb-final "dass" clauses.

German conventions chosen (both forms are standard German): a leading one is written out, 100 ->
"einhundert" and 1000 -> "eintausend"; counted nouns never use numbers ending in "-eins" (101, 201...),
whose noun agreement is disputed. Determinism: ``random.Random(seed)`` only, no set or hash ordering, so
the same seed writes byte-identical files. Splits are disjoint on both the English and the German side.

Run: ``python -c "from seqba.data.synthetic import write_synthetic_corpus as w; w('runs/synth')"``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen").split()
EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
DE_ONES = ("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn "
           "sechzehn siebzehn achtzehn neunzehn").split()
DE_TENS = "_ _ zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()
MONTHS = list(zip("January February March April May June July August September October November December".split(),
                  "Januar Februar März April Mai Juni Juli August September Oktober November Dezember".split(),
                  (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)))
WEEKDAYS = list(zip("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
                    "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag".split()))
# (English singular, English plural, German singular, German plural, gender, kind)
NOUNS = [tuple(entry.split(",")) for entry in (
    "apple,apples,Apfel,Äpfel,m,thing book,books,Buch,Bücher,n,thing bottle,bottles,Flasche,Flaschen,f,thing "
    "chair,chairs,Stuhl,Stühle,m,thing table,tables,Tisch,Tische,m,thing flower,flowers,Blume,Blumen,f,thing "
    "letter,letters,Brief,Briefe,m,thing house,houses,Haus,Häuser,n,thing car,cars,Auto,Autos,n,thing "
    "glass,glasses,Glas,Gläser,n,thing egg,eggs,Ei,Eier,n,thing key,keys,Schlüssel,Schlüssel,m,thing "
    "cup,cups,Tasse,Tassen,f,thing picture,pictures,Bild,Bilder,n,thing window,windows,Fenster,Fenster,n,thing "
    "bag,bags,Tasche,Taschen,f,thing lamp,lamps,Lampe,Lampen,f,thing "
    "dog,dogs,Hund,Hunde,m,animal cat,cats,Katze,Katzen,f,animal bird,birds,Vogel,Vögel,m,animal "
    "horse,horses,Pferd,Pferde,n,animal mouse,mice,Maus,Mäuse,f,animal cow,cows,Kuh,Kühe,f,animal "
    "child,children,Kind,Kinder,n,person woman,women,Frau,Frauen,f,person man,men,Mann,Männer,m,person "
    "friend,friends,Freund,Freunde,m,person girl,girls,Mädchen,Mädchen,n,person").split()]
NOUN_BY_EN = {noun[0]: noun for noun in NOUNS}
UNITS = [tuple(e.split(",")) for e in ("minute,minutes,Minute,Minuten,f hour,hours,Stunde,Stunden,f "
                                       "day,days,Tag,Tage,m week,weeks,Woche,Wochen,f "
                                       "month,months,Monat,Monate,m year,years,Jahr,Jahre,n").split()]
ADJECTIVES = list(zip("red big small old new green blue yellow black white beautiful cheap".split(),
                      "rot groß klein alt neu grün blau gelb schwarz weiß schön billig".split()))
ADJECTIVE_BY_EN = dict(ADJECTIVES)
# (English, German capitalised, German inside a sentence, person)
SUBJECTS = [("I", "Ich", "ich", "1sg"), ("he", "Er", "er", "3sg"), ("she", "Sie", "sie", "3sg"),
            ("we", "Wir", "wir", "1pl"), ("they", "Sie", "sie", "3pl"),
            ("my sister", "Meine Schwester", "meine Schwester", "3sg"),
            ("my brother", "Mein Bruder", "mein Bruder", "3sg"), ("the teacher", "Der Lehrer", "der Lehrer", "3sg"),
            ("our neighbours", "Unsere Nachbarn", "unsere Nachbarn", "3pl")]
# person -> (English, German)
HAVE = {"1sg": ("have", "habe"), "3sg": ("has", "hat"), "1pl": ("have", "haben"), "3pl": ("have", "haben")}
BE = {"1sg": ("am", "bin"), "3sg": ("is", "ist"), "1pl": ("are", "sind"), "3pl": ("are", "sind")}
WAS = {"1sg": ("was", "wurde"), "3sg": ("was", "wurde"), "1pl": ("were", "wurden"), "3pl": ("were", "wurden")}
PAST_SG_PL = {"arrived": ("kam", "kamen"), "moved": ("zog", "zogen")}
# (English base, English 3sg, German 1sg, 3sg, plural, separable particle)
ROUTINES = [("eat", "eats", "esse", "isst", "essen", ""), ("work", "works", "arbeite", "arbeitet", "arbeiten", ""),
            ("get up", "gets up", "stehe", "steht", "stehen", " auf"),
            ("go home", "goes home", "gehe", "geht", "gehen", " nach Hause")]
# (English past, German participle, noun kinds it takes)
PERFECT = [("bought", "gekauft", "thing animal"), ("saw", "gesehen", "thing animal person"),
           ("found", "gefunden", "thing animal"), ("sold", "verkauft", "thing"), ("ordered", "bestellt", "thing"),
           ("painted", "gemalt", "thing animal person")]
OPINIONS = [("I think", "Ich glaube"), ("We know", "Wir wissen"), ("She says", "Sie sagt"), ("He hopes", "Er hofft")]
PLACES = [("in the garden", "Im Garten"), ("in the kitchen", "In der Küche"), ("on the table", "Auf dem Tisch"),
          ("in the box", "In der Kiste"), ("at the station", "Am Bahnhof"), ("in our village", "In unserem Dorf")]
SCHEDULES = [("The train leaves", "Der Zug fährt", " ab"), ("The bus arrives", "Der Bus kommt", " an"),
             ("The film starts", "Der Film beginnt", ""), ("The shop opens", "Das Geschäft öffnet", ""),
             ("The shop closes", "Das Geschäft schließt", ""), ("The lesson ends", "Der Unterricht endet", "")]
EVENTS = [("The meeting", "Die Besprechung"), ("The concert", "Das Konzert"), ("The party", "Die Feier"),
          ("The exam", "Die Prüfung"), ("The wedding", "Die Hochzeit"), ("The course", "Der Kurs")]
STATEMENTS = [("The correct answer is", "Die richtige Antwort ist", ""),
              ("The final result is", "Das Endergebnis ist", ""),
              ("She counted to", "Sie zählte bis", ""), ("He wrote down the number", "Er schrieb die Zahl", " auf")]
CITIES = list(zip("Berlin Hamburg Munich Vienna Cologne Zurich Paris Rome London".split(),
                  "Berlin Hamburg München Wien Köln Zürich Paris Rom London".split()))
CURRENCIES = [("euro", "euros", "Euro", "m"), ("dollar", "dollars", "Dollar", "m"), ("pound", "pounds", "Pfund", "n")]
ARTICLE = {"nom": {"m": "der", "f": "die", "n": "das"}}
INDEFINITE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"},
              "dat": {"m": "einem", "f": "einer", "n": "einem"}}
MIXED_ENDING = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"},
                "dat": {"m": "en", "f": "en", "n": "en"}}


def english_number(n: int) -> str:
    """British English cardinal for 0 <= n < 1,000,000: 342 -> "three hundred and forty-two"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"english_number supports 0..999999, got {n}")
    if n < 20:
        return EN_ONES[n]
    if n < 100:
        return EN_TENS[n // 10] + (f"-{EN_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{EN_ONES[n // 100]} hundred" + (f" and {english_number(n % 100)}" if n % 100 else "")
    rest = n % 1000
    tail = "" if rest == 0 else f" and {english_number(rest)}" if rest < 100 else f" {english_number(rest)}"
    return f"{english_number(n // 1000)} thousand{tail}"


def german_number(n: int) -> str:
    """German cardinal as said alone, for 0 <= n < 1,000,000: 1 -> "eins", 21 -> "einundzwanzig",
    101 -> "einhunderteins", 1000 -> "eintausend", 9999 -> "neuntausendneunhundertneunundneunzig"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"german_number supports 0..999999, got {n}")
    if n < 20:
        return DE_ONES[n]
    if n < 100:
        units, tens = n % 10, n // 10
        return DE_TENS[tens] if units == 0 else f"{'ein' if units == 1 else DE_ONES[units]}und{DE_TENS[tens]}"
    thousands, hundreds, rest = n // 1000, n // 100 % 10, n % 100
    words = _german_prefix(thousands) + "tausend" if thousands else ""
    words += _german_prefix(hundreds) + "hundert" if hundreds else ""
    return words + (german_number(rest) if rest else "")


def _german_prefix(n: int) -> str:
    """A number before "hundert"/"tausend"/"Uhr": a final "eins" becomes "ein" (einhundert, einundzwanzigtausend)."""
    word = german_number(n)
    return word[:-1] if word.endswith("eins") else word


def noun_phrase(n: int, noun: str, case: str, adjective: str | None = None) -> tuple[str, str]:
    """("three red apples", "drei rote Äpfel") for ``n`` of the English ``noun`` in German ``case``
    ("nom", "acc", "dat"); n == 1 gives the indefinite article ("einen roten Apfel")."""
    en_sg, en_pl, de_sg, de_pl, gender = (NOUN_BY_EN.get(noun) or next(u for u in UNITS if u[0] == noun))[:5]
    if n % 100 == 1 and n > 1:
        raise ValueError(f"{n}: counted nouns avoid numbers ending in 'eins'")
    adj_en, adj_de = (f" {adjective}", f" {ADJECTIVE_BY_EN[adjective]}") if adjective else ("", "")
    if n == 1:
        ending = MIXED_ENDING[case][gender] if adjective else ""
        return f"one{adj_en} {en_sg}", f"{INDEFINITE[case][gender]}{adj_de}{ending} {de_sg}"
    if case == "dat" and not de_pl.endswith(("n", "s")):
        de_pl += "n"  # dative plural: mit drei Hunden, aber mit drei Katzen / Autos
    ending = ("en" if case == "dat" else "e") if adjective else ""  # strong plural ending, no article
    return f"{english_number(n)}{adj_en} {en_pl}", f"{german_number(n)}{adj_de}{ending} {de_pl}"


def english_ordinal(day: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_phrase(day: int, month: int, year: int | None = None, style: str = "ordinal") -> tuple[str, str]:
    """("on the 21st of March 1987", "am 21. März 1987"); ``style="us"`` gives "on March 21, 1987"."""
    en_month, de_month, _ = MONTHS[month - 1]
    de = f"am {day}. {de_month}" + (f" {year}" if year else "")
    if style == "us":
        return f"on {en_month} {day}" + (f", {year}" if year else ""), de
    return f"on the {english_ordinal(day)} of {en_month}" + (f" {year}" if year else ""), de


def time_phrase(hour: int, minute: int, style: str = "words") -> tuple[str, str]:
    """("at half past seven", "um halb acht") for 1 <= hour <= 12 and minute in {0, 5, 10, 15, 20, 30, 40, 45,
    50, 55}; ``style="digits"`` takes 0 <= hour <= 23 and any minute: ("at 18:30", "um 18:30 Uhr")."""
    if style == "digits":
        return f"at {hour}:{minute:02d}", f"um {hour}:{minute:02d} Uhr"
    nxt = hour % 12 + 1
    if minute == 0:
        return f"at {english_number(hour)} o'clock", f"um {_german_prefix(hour)} Uhr"
    if minute == 30:
        return f"at half past {english_number(hour)}", f"um halb {german_number(nxt)}"
    if minute in (15, 45):
        en, de, h = ("past", "nach", hour) if minute == 15 else ("to", "vor", nxt)
        return f"at a quarter {en} {english_number(h)}", f"um Viertel {de} {german_number(h)}"
    m, en, de, h = (minute, "past", "nach", hour) if minute < 30 else (60 - minute, "to", "vor", nxt)
    return f"at {english_number(m)} {en} {english_number(h)}", f"um {german_number(m)} {de} {german_number(h)}"


def price_phrase(units: int, cents: int, currency: str, style: str = "words") -> tuple[str, str]:
    """Accusative price: ("twelve euros and fifty cents", "zwölf Euro und fünfzig Cent"), ("one euro",
    "einen Euro"); ``style="digits"``: ("1,250.99 dollars", "1.250,99 Dollar")."""
    en_sg, en_pl, de, gender = next(c for c in CURRENCIES if c[0] == currency)
    if style == "digits":
        return f"{units:,}.{cents:02d} {en_pl}", f"{units:,}".replace(",", ".") + f",{cents:02d} {de}"
    en_words, de_words = (f"one {en_sg}", f"{INDEFINITE['acc'][gender]} {de}") if units == 1 else \
        (f"{english_number(units)} {en_pl}", f"{german_number(units)} {de}")
    if cents:
        en_words += " and " + ("one cent" if cents == 1 else f"{english_number(cents)} cents")
        de_words += " und " + ("einen Cent" if cents == 1 else f"{german_number(cents)} Cent")
    return en_words, de_words


def _count(rng: random.Random, upper: int = 9999) -> int:
    """A count for nouns: mostly small, sometimes up to ``upper``; never 101, 201, ... (see noun_phrase)."""
    ranges = [r for r in ((1, 12), (1, 12), (2, 99), (2, 99), (100, 999), (1000, 9999)) if r[0] <= upper]
    while True:
        low, high = rng.choice(ranges)  # 1/3 small, 1/3 two-digit, 1/6 hundreds, 1/6 thousands
        n = rng.randint(low, min(high, upper))
        if not (n % 100 == 1 and n > 1):
            return n


def _np(rng: random.Random, case: str, kinds: str = "thing animal person") -> tuple[str, str]:
    noun = rng.choice([n for n in NOUNS if n[5] in kinds.split()])[0]
    adjective = rng.choice(ADJECTIVES)[0] if rng.random() < 0.5 else None
    return noun_phrase(_count(rng), noun, case, adjective)


def _date(rng: random.Random, with_year: bool = True) -> tuple[str, str]:
    month = rng.randint(1, 12)
    day = rng.randint(1, MONTHS[month - 1][2])
    return date_phrase(day, month, rng.randint(1900, 2030) if with_year else None, rng.choice(("ordinal", "us")))


def _when(rng: random.Random) -> tuple[str, str]:
    """A past time: a date, a weekday, or "last Friday"."""
    choice = rng.randint(0, 3)
    day_en, day_de = rng.choice(WEEKDAYS)
    if choice < 2:
        return _date(rng)
    return (f"on {day_en}", f"am {day_de}") if choice == 2 else (f"last {day_en}", f"letzten {day_de}")


def _time(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.3:
        return time_phrase(rng.randint(0, 23), rng.randrange(0, 60, 5), "digits")
    return time_phrase(rng.randint(1, 12), rng.choice((0, 5, 10, 15, 20, 30, 40, 45, 50, 55)))


def _sentence(rng: random.Random) -> tuple[str, str]:
    """One (English, German) pair from a random template."""
    s_en, s_de, s_mid, person = rng.choice(SUBJECTS)
    plural = person.endswith("pl")
    template = rng.randint(0, 13)
    if template == 0:
        en, de = _np(rng, "acc")
        return f"{s_en} {HAVE[person][0]} {en}.", f"{s_de} {HAVE[person][1]} {de}."
    if template in (1, 2):
        past, participle, kinds = rng.choice(PERFECT)
        (en, de), (w_en, w_de) = _np(rng, "acc", kinds), _when(rng)
        return f"{s_en} {past} {en} {w_en}.", f"{s_de} {HAVE[person][1]} {w_de} {de} {participle}."
    if template == 3:
        (o_en, o_de), (past, participle, kinds) = rng.choice(OPINIONS), rng.choice(PERFECT)
        en, de = _np(rng, "acc", kinds)
        return f"{o_en} that {s_en} {past} {en}.", f"{o_de}, dass {s_mid} {de} {participle} {HAVE[person][1]}."
    if template == 4:
        (p_en, p_de), (en, de) = rng.choice(PLACES), _np(rng, "acc")
        return f"There {'is' if en.startswith('one ') else 'are'} {en} {p_en}.", f"{p_de} gibt es {de}."
    if template == 5:
        (en, de), (t_en, t_de) = _np(rng, "dat"), _time(rng)
        verb = PAST_SG_PL["arrived"][plural]
        return f"{s_en} arrived with {en} {t_en}.", f"{s_de} {verb} {t_de} mit {de} an."
    if template == 6:
        (d_en, d_de), (t_en, t_de) = rng.choice(WEEKDAYS), _time(rng)
        base, third, de1, de3, depl, particle = rng.choice(ROUTINES)
        v_en, v_de = (third, de3) if person == "3sg" else (base, de1 if person == "1sg" else depl)
        return f"On {d_en} {s_en} {v_en} {t_en}.", f"Am {d_de} {v_de} {s_mid} {t_de}{particle}."
    if template == 7:
        (e_en, e_de, particle), (t_en, t_de) = rng.choice(SCHEDULES), _time(rng)
        return f"{e_en} {t_en}.", f"{e_de} {t_de}{particle}."
    if template == 8:
        noun = rng.choice([n for n in NOUNS if n[5] == "thing"])
        (a_en, a_de), currency = rng.choice(ADJECTIVES), rng.choice(CURRENCIES)[0]
        if rng.random() < 0.5:
            p_en, p_de = price_phrase(rng.randint(1, 9999), rng.randint(0, 99), currency, "digits")
        else:
            cents = rng.choice((0, rng.randint(1, 99))) if currency != "pound" else 0
            p_en, p_de = price_phrase(_count(rng, 999), cents, currency)
        if rng.random() < 0.5:
            return (f"The {a_en} {noun[0]} costs {p_en}.",
                    f"{ARTICLE['nom'][noun[4]].capitalize()} {a_de}e {noun[2]} kostet {p_de}.")
        n = rng.randint(2, 20)
        return (f"The {english_number(n)} {a_en} {noun[1]} cost {p_en}.",
                f"Die {german_number(n)} {a_de}en {noun[3]} kosten {p_de}.")
    if template == 9:
        d_en, d_de = _date(rng)
        return f"{s_en} {WAS[person][0]} born {d_en}.", f"{s_de} {WAS[person][1]} {d_de} geboren."
    if template == 10:
        n = rng.choice((rng.randint(1, 20), rng.randint(1, 110)))
        n = 100 if n == 101 else n
        years_en, years_de = ("year", "Jahr") if n == 1 else ("years", "Jahre")
        n_de = "ein" if n == 1 else german_number(n)
        return (f"{s_en} {BE[person][0]} {english_number(n)} {years_en} old.",
                f"{s_de} {BE[person][1]} {n_de} {years_de} alt.")
    if template == 11:
        (st_en, st_de, particle), n = rng.choice(STATEMENTS), rng.choice((rng.randint(1, 20), rng.randint(1, 9999)))
        return f"{st_en} {english_number(n)}.", f"{st_de} {german_number(n)}{particle}."
    if template == 12:
        (e_en, e_de), month = rng.choice(EVENTS), rng.randint(1, 12)
        if rng.random() < 0.5:
            (w_en, w_de), day = rng.choice(WEEKDAYS), rng.randint(1, MONTHS[month - 1][2])
            m_en, m_de, _ = MONTHS[month - 1]
            return (f"{e_en} is on {w_en}, the {english_ordinal(day)} of {m_en}.",
                    f"{e_de} ist am {w_de}, dem {day}. {m_de}.")
        first, last = sorted(rng.sample(range(1, MONTHS[month - 1][2] + 1), 2))
        return (f"{e_en} lasts from the {english_ordinal(first)} to the {english_ordinal(last)} of "
                f"{MONTHS[month - 1][0]}.", f"{e_de} dauert vom {first}. bis zum {last}. {MONTHS[month - 1][1]}.")
    if rng.random() < 0.5:  # template 13
        (c_en, c_de), year = rng.choice(CITIES), rng.randint(1900, 2030)
        moved = PAST_SG_PL["moved"][plural]
        return f"In {year} {s_en} moved to {c_en}.", f"Im Jahr {year} {moved} {s_mid} nach {c_de}."
    unit = rng.choice(UNITS)[0]
    en, de = noun_phrase(_count(rng, 99), unit, "acc")
    return f"{s_en} waited for {en}.", f"{s_de} {HAVE[person][1]} {de} gewartet."


def generate_pairs(n: int, seed: int = 0, exclude: tuple[set, set] | None = None) -> list[tuple[str, str]]:
    """``n`` distinct (English, German) sentence pairs, 5 to 15 words each side, deterministic in ``seed``.

    No English and no German sentence repeats (nor appears in ``exclude``, a pair of sets of sentences).
    """
    rng = random.Random(seed)
    seen_en, seen_de = exclude if exclude is not None else (set(), set())
    pairs: list[tuple[str, str]] = []
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"could not generate {n} distinct sentences (got {len(pairs)})")
        en, de = _sentence(rng)
        en = en[0].upper() + en[1:]
        if not (5 <= len(en.split()) <= 15 and 5 <= len(de.split()) <= 15) or en in seen_en or de in seen_de:
            continue
        seen_en.add(en)
        seen_de.add(de)
        pairs.append((en, de))
    return pairs


def write_synthetic_corpus(out_dir: str | os.PathLike, n_train: int = 50000, n_valid: int = 1000,
                           n_test: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Write ``{train,valid,test}.{en,de}`` (one sentence per line, UTF-8) into ``out_dir``.

    Test sentences are drawn first, then valid, then train, from one ``seed``-ed stream that never repeats a
    sentence, so the splits are disjoint on both sides and the same seed gives byte-identical files. Each
    file is written to a temporary name and renamed. Returns ``{"train.en": path, ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = generate_pairs(n_test + n_valid + n_train, seed)
    splits = {"test": pairs[:n_test], "valid": pairs[n_test:n_test + n_valid], "train": pairs[n_test + n_valid:]}
    paths = {}
    for split, split_pairs in splits.items():
        for side, lang in enumerate(("en", "de")):
            path = out / f"{split}.{lang}"
            with open(f"{path}.tmp", "w", encoding="utf-8", newline="\n") as f:
                f.writelines(pair[side] + "\n" for pair in split_pairs)
            os.replace(f"{path}.tmp", path)
            paths[f"{split}.{lang}"] = path
    return paths
