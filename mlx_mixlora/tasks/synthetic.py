"""Seeded generators that write unlimited rows in the real datasets' schemas.

Offline, nothing can be downloaded, so each built-in task has a generator whose
rows look like its hub dataset's rows (same field names and label encoding) and
whose answer follows from the content: a news snippet's topic from its words,
a yes/no answer from one passage sentence, a headline from the first sentence,
a review's polarity from its adjectives. On the nano base a rank-8 attention
LoRA learns the three label tasks (>= 96%); the headline, which must be copied
from the article, is not learnt by the demo recipe (ROUGE-L ~0.2, see the report):
the nano base does not copy from its context (`mlx_mixlora.nano.copy_probe`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

# Bump when any generator's output changes: it is part of the nano base's cache key.
GENERATOR_VERSION = 2

NEUTRAL_TAILS = [
    "on monday",
    "on tuesday",
    "on friday",
    "this week",
    "late on sunday",
    "in london",
    "in tokyo",
    "in paris",
    "after long talks",
    "as expected",
    "earlier today",
    "in new york",
]

TIMES = ["on monday", "on tuesday", "on friday", "this week", "late on sunday", "earlier today"]

TOPICS = {  # AG News label ids: 0 World, 1 Sports, 2 Business, 3 Sci/Tech
    0: (
        [
            "the prime minister",
            "rebel leaders",
            "the united nations",
            "the foreign minister",
            "peace envoys",
            "the president",
            "border guards",
            "opposition parties",
            "the embassy",
        ],
        ["signed", "rejected", "debated", "condemned", "backed", "delayed"],
        [
            "a ceasefire deal",
            "new sanctions",
            "an election plan",
            "a peace treaty",
            "the refugee plan",
            "the border accord",
            "the troop withdrawal",
            "a vote on war",
        ],
    ),
    1: (
        [
            "the home team",
            "the striker",
            "the coach",
            "the champions",
            "the goalkeeper",
            "the tennis star",
            "the captain",
            "the sprinter",
            "the midfielder",
        ],
        ["won", "lost", "scored in", "dominated", "played in", "quit"],
        [
            "the cup final",
            "the semifinal",
            "the league match",
            "the title game",
            "the derby",
            "the grand slam",
            "the relay race",
            "the playoff game",
        ],
    ),
    2: (
        [
            "the bank",
            "investors",
            "the retailer",
            "shareholders",
            "the central bank",
            "the airline",
            "the oil company",
            "the carmaker",
            "wall street",
        ],
        ["reported", "raised", "cut", "reviewed", "sold", "doubled"],
        [
            "quarterly profits",
            "interest rates",
            "its stock price",
            "a merger deal",
            "sales forecasts",
            "the dividend",
            "annual revenue",
            "fuel prices",
        ],
    ),
    3: (
        [
            "the software firm",
            "researchers",
            "the chip maker",
            "astronomers",
            "the startup",
            "engineers",
            "the space agency",
            "scientists",
            "the web company",
        ],
        ["released", "tested", "unveiled", "launched", "studied", "patched"],
        [
            "a new smartphone",
            "a faster processor",
            "the web browser",
            "a mars probe",
            "an ai model",
            "a security update",
            "a quantum computer",
            "a new search engine",
        ],
    ),
}

OBJECTS = [
    "door",
    "lake",
    "car",
    "house",
    "bird",
    "box",
    "road",
    "shirt",
    "cup",
    "tree",
    "bridge",
    "boat",
    "chair",
    "kite",
    "lamp",
    "wall",
    "bike",
    "coat",
    "fence",
    "train",
]
SCENES = [
    "A man walked past the {other}.",
    "The {other} stood near the gate.",
    "Children played by the {other}.",
    "The {other} was quite old.",
    "Someone moved the {other} yesterday.",
    "The {other} looked clean.",
]
COLORS = ["red", "blue", "green", "white", "black", "yellow", "brown", "gray", "pink", "orange"]

FIRST = [
    "anna",
    "ben",
    "carla",
    "david",
    "elena",
    "frank",
    "grace",
    "hugo",
    "irene",
    "jonas",
    "karen",
    "leo",
    "maria",
    "nick",
    "olga",
    "peter",
    "rosa",
    "sam",
    "tara",
    "victor",
]
LAST = [
    "adams",
    "baker",
    "clark",
    "diaz",
    "evans",
    "fischer",
    "garcia",
    "hill",
    "ito",
    "jones",
    "kim",
    "lopez",
    "moore",
    "novak",
    "owens",
    "patel",
    "reyes",
    "smith",
    "turner",
    "wong",
]
ROLES = [
    "the mayor",
    "the minister",
    "the judge",
    "the doctor",
    "the teacher",
    "the chef",
    "the pilot",
    "the farmer",
    "the author",
    "the lawyer",
]
ACTIONS = [
    "opened",
    "closed",
    "visited",
    "sold",
    "bought",
    "built",
    "painted",
    "repaired",
    "designed",
    "cleaned",
]
THINGS = [
    "the new bridge",
    "the old school",
    "a small museum",
    "the city library",
    "a red barn",
    "the harbor",
    "a local bakery",
    "the train station",
    "a public garden",
    "the stadium",
]
PLACES = [
    "in dover",
    "in leeds",
    "in austin",
    "in malmo",
    "in porto",
    "in kyoto",
    "in oslo",
    "in perth",
    "in quebec",
    "in turin",
]
FILLERS = [
    "the work took {n} months",
    "local people were pleased",
    "the cost was {n} million dollars",
    "more events are planned",
    "the weather was mild",
    "a crowd of {n} hundred watched",
    "officials gave no details",
    "the project began last year",
]

POSITIVE = [
    "brilliant",
    "moving",
    "charming",
    "delightful",
    "superb",
    "funny",
    "warm",
    "gripping",
    "beautiful",
    "clever",
    "fresh",
    "wonderful",
]
NEGATIVE = [
    "dull",
    "awful",
    "boring",
    "clumsy",
    "tedious",
    "bland",
    "painful",
    "messy",
    "lifeless",
    "silly",
    "stale",
    "dreadful",
]
ASPECTS = [
    "the acting",
    "the plot",
    "the script",
    "the music",
    "the ending",
    "the cast",
    "the story",
    "the dialogue",
    "the pacing",
    "the camera work",
    "the lead",
    "the humor",
]
GLUE = ["and", "and also", "while", "and overall"]


def ag_news(rng: random.Random) -> dict:
    label = rng.randrange(4)
    actors, verbs, objects = TOPICS[label]
    text = f"{rng.choice(actors)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(NEUTRAL_TAILS)}."
    return {"text": text[0].upper() + text[1:], "label": label}


def boolq(rng: random.Random) -> dict:
    """One fact sentence answers the question (its `not` decides); one sentence is filler."""
    obj, color = rng.choice(OBJECTS), rng.choice(COLORS)
    answer = rng.random() < 0.5
    fact = f"The {obj} is {'' if answer else 'not '}{color}."
    other = rng.choice([o for o in OBJECTS if o != obj])
    filler = rng.choice(SCENES).format(other=other)
    passage = f"{fact} {filler}" if rng.random() < 0.5 else f"{filler} {fact}"
    return {"question": f"is the {obj} {color}", "passage": passage, "answer": answer}


def cnn_dailymail(rng: random.Random) -> dict:
    """The highlight is the lead sentence's subject, verb and object."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    role, action, thing = rng.choice(ROLES), rng.choice(ACTIONS), rng.choice(THINGS)
    place, tail = rng.choice(PLACES), rng.choice(TIMES)
    lead = f"{first.title()} {last.title()} {action} {thing} {place} {tail}."
    fillers = [f.format(n=rng.randrange(2, 10)) for f in rng.sample(FILLERS, 2)]
    second = f"{last.title()}, {role}, said {fillers[0]}."
    third = fillers[1][0].upper() + fillers[1][1:] + "."
    article = " ".join([lead, second, third])
    highlights = f"{first.title()} {last.title()} {action} {thing}."
    return {"article": article, "highlights": highlights, "id": f"{rng.getrandbits(40):010x}"}


def sst2(rng: random.Random) -> dict:
    label = rng.randrange(2)
    words = POSITIVE if label == 1 else NEGATIVE
    a1, a2 = rng.sample(ASPECTS, 2)
    w1, w2 = rng.sample(words, 2)
    sentence = f"{a1} was {w1} {rng.choice(GLUE)} {a2} felt {w2} ."
    return {"sentence": sentence, "label": label, "idx": rng.getrandbits(24)}


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "ag_news": ag_news,
    "boolq": boolq,
    "cnn_dailymail": cnn_dailymail,
    "sst2": sst2,
}


def stream(generator: str, seed: int) -> Iterator[dict]:
    """An endless, seeded stream of rows from one generator."""
    fn = GENERATORS[generator]
    rng = random.Random(f"{generator}:{seed}")
    while True:
        yield fn(rng)


def unlabeled_texts(row: dict) -> list[str]:
    """The unlabeled text in a row (what the nano base may pretrain on): never answers."""
    keys = ("text", "passage", "question", "article", "sentence")
    return [str(row[k]) for k in keys if k in row]
