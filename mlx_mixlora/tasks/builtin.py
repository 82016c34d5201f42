"""The four built-in tasks of the seed projects, with their real hub datasets."""

from __future__ import annotations

from . import builtin_phrasings as P
from .spec import HubSource, Task

# Hub splits: where a dataset has no labelled test split, its validation split is
# the test split and validation is carved from the end of train (disjoint).
CLASSIFICATION = Task(
    name="classification",
    fields=("text",),
    template="News: {text}\nTopic (World, Sports, Business or Sci/Tech):",
    target="label",
    labels={"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"},
    hub=HubSource(
        "ag_news", None, {"train": "train[:95%]", "validation": "train[95%:]", "test": "test"}
    ),
    synthetic="ag_news",
    max_new_tokens=6,
    description="AG News topic classification",
    phrasings=P.CLASSIFICATION_PHRASINGS,
    heldout_phrasings=P.CLASSIFICATION_HELDOUT,
)

QA = Task(
    name="qa",
    fields=("passage", "question"),
    template="Passage: {passage}\nQuestion: {question}?\nAnswer (yes or no):",
    target="answer",
    labels={"true": "yes", "false": "no"},
    hub=HubSource(
        "google/boolq",
        None,
        {"train": "train[:90%]", "validation": "train[90%:]", "test": "validation"},
    ),
    synthetic="boolq",
    max_new_tokens=4,
    description="BoolQ yes/no question answering",
    phrasings=P.QA_PHRASINGS,
    heldout_phrasings=P.QA_HELDOUT,
)

SUMMARIZATION = Task(
    name="summarization",
    fields=("article",),
    template="Article: {article}\nSummary:",
    target="highlights",
    metric="rouge_l",
    hub=HubSource(
        "cnn_dailymail", "3.0.0", {"train": "train", "validation": "validation", "test": "test"}
    ),
    synthetic="cnn_dailymail",
    max_new_tokens=24,
    description="CNN/DailyMail summarization",
    phrasings=P.SUMMARIZATION_PHRASINGS,
    heldout_phrasings=P.SUMMARIZATION_HELDOUT,
)

SENTIMENT = Task(
    name="sentiment",
    fields=("sentence",),
    template="Review: {sentence}\nSentiment (positive or negative):",
    target="label",
    labels={"0": "negative", "1": "positive"},
    hub=HubSource(
        "glue", "sst2", {"train": "train[:95%]", "validation": "train[95%:]", "test": "validation"}
    ),
    synthetic="sst2",
    max_new_tokens=4,
    description="SST-2 sentiment",
    phrasings=P.SENTIMENT_PHRASINGS,
    heldout_phrasings=P.SENTIMENT_HELDOUT,
)

BUILTIN_TASKS = (CLASSIFICATION, QA, SUMMARIZATION, SENTIMENT)
