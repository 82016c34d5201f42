"""How people ask for each built-in task: train phrasings and held-out phrasings.

Written by hand, independently of the natural-request test set (natural_requests.jsonl).
Train phrasings train adapters and gates; held-out phrasings are only evaluated, so
accuracy on them measures generalisation to wordings never trained on.
"""

from __future__ import annotations

CLASSIFICATION_PHRASINGS = (
    "Classify this news headline as World, Sports, Business or Sci/Tech.\n{text}\nCategory:",
    "Topic? {text}",
    "Hi! I found this headline and I'm curious which section of the paper it belongs in: {text}\nSection:",
    "{text}\nWhich topic is this: World, Sports, Business or Sci/Tech?",
    'Categorize the following snippet.\n"{text}"\nAnswer:',
    "What is the topic of this news item? {text}",
    "Label the news story below with its topic.\n{text}\nLabel:",
    'Headline: "{text}" - which category fits best?',
    "Decide whether this story is about World, Sports, Business or Sci/Tech: {text}\nDecision:",
    "Sort this headline into a news section. {text} Section:",
    "Identify the subject area of the following text.\nText: {text}\nSubject:",
    "{text}\n\nWhat kind of news is that?",
    'Could you tell me the category of this news report? "{text}"',
    "Read the news line and name its topic (World / Sports / Business / Sci/Tech).\n{text}\nTopic name:",
    "Which desk would cover this story? {text}",
    "Story: {text}\nIts category is",
    "Determine the topic for: {text}",
    "In a word or two, what is this article about? {text}",
    "Here is a short news report: {text} Pick the best topic from World, Sports, Business, Sci/Tech:",
    "News item\n{text}\nClass:",
)

CLASSIFICATION_HELDOUT = (
    "Assign a section to this headline (World, Sports, Business, or Sci/Tech).\n{text}\nAssigned section:",
    "{text}\nOptions are World / Sports / Business / Sci/Tech. Correct option:",
    'Hey, quick question: what topic would you file this under? "{text}"',
    "Give the news category for the sentence below.\n{text}",
    "Would this go in World, Sports, Business or Sci/Tech? {text}",
    "Report: {text}\nGenre:",
    "Put this story in the right bucket: {text}\nBucket:",
    "My editor wants each wire story tagged. What tag does this one get?\n{text}\nTag:",
)

QA_PHRASINGS = (
    "Read the passage and answer yes or no.\n{passage}\nQuestion: {question}?\nAnswer:",
    "{passage}\n{question}?",
    'Based on this text: "{passage}" - {question}? Yes or no:',
    "Context: {passage}\nQ: {question}?\nA:",
    "Hi! Here's a little passage: {passage} Can you tell me, {question}?",
    "Answer with yes or no. {passage} Question: {question}?",
    "According to the passage below, {question}?\n{passage}\nYes or no:",
    "Text: {passage}\nDecide yes or no: {question}?\nDecision:",
    "{question}? Use this passage to answer: {passage}\nAnswer (yes/no):",
    "Passage says: {passage}\nSo, {question}? Reply yes or no.",
    "Determine whether the answer is yes or no.\nStatement: {passage}\nQuery: {question}?\nResult:",
    'Check the passage and tell me: {question}?\n"{passage}"',
    "Here is some information.\n{passage}\nQuestion - {question}?\nYour answer:",
    "Yes/no question about the following text: {passage}\nThe question: {question}?",
    "Read this: {passage}\nNow answer: {question}?",
    "Using only the facts in this passage, answer the question.\n{passage}\n{question}?",
    "{passage} Question: {question}? True answer (yes or no):",
    "Q: {question}?\nContext: {passage}\nA (yes/no):",
    'I read this: "{passage}" and I wonder, {question}?',
    "Does the text support it? {passage} Claim check: {question}? Respond yes or no:",
)

QA_HELDOUT = (
    "Look at the short text below and reply with yes or no.\nText: {passage}\n{question}?",
    "Here's a paragraph: {passage}\nMy question: {question}? Just say yes or no.",
    "Facts: {passage}\nInquiry: {question}?\nReply:",
    '{question}? Please answer from this passage only: "{passage}"',
    "Quick one - {question}? The passage is: {passage}",
    "Snippet:\n{passage}\nIs the following true: {question}?\nyes/no:",
    "Respond yes or no after reading.\n{passage}\nWell, {question}?",
    'Given the passage "{passage}", {question}?',
)

SUMMARIZATION_PHRASINGS = (
    "Summarize this article in one sentence.\n{article}\nSummary sentence:",
    "Headline? {article}",
    "{article}\nWrite a headline for the story above:",
    "Give me a short headline for this news story: {article}\nHeadline:",
    "Article text: {article}\nTL;DR:",
    'Write a one-line summary of the following text.\n"{article}"\nOne-line summary:',
    "Hi! Could you boil this article down to a single headline? {article}",
    "Condense the story into its main point.\nStory: {article}\nMain point:",
    "What is the gist of this news piece? {article}\nGist:",
    "News story:\n{article}\nHeadline:",
    "Create a title for this report. {article} Title:",
    "In short, what happened? {article}",
    "Read the article and produce its headline.\n{article}\nProduced headline:",
    "{article}\n\nSum that up in a sentence:",
    "Please shorten the following news article to one sentence: {article}",
    "Text to summarize: {article}\nShort version:",
    "Identify the key event described here and state it briefly.\n{article}\nKey event:",
    'Report:\n"{article}"\nSummarized:',
    "I need a headline for my newsletter based on this piece: {article}\nSuggested headline:",
    "Shorten: {article}",
)

SUMMARIZATION_HELDOUT = (
    "Here's a news blurb: {article}\nWhat would the headline be?",
    "Compress this into a brief headline:\n{article}",
    "{article}\nIn a nutshell:",
    'Hey there, can you recap this story for me in a few words? "{article}"',
    "Draft a newspaper heading for the passage below.\n{article}\nHeading:",
    "Piece: {article}\nCapsule summary:",
    "Reduce the text to the essential who-did-what.\n{article}\nEssentials:",
    "What's the main takeaway of this news report? {article}",
)

SENTIMENT_PHRASINGS = (
    "Is this movie review positive or negative?\n{sentence}",
    "Sentiment? {sentence}",
    'Classify the sentiment of this review: "{sentence}"\nSentiment:',
    "{sentence}\nDid the reviewer like the film? Answer positive or negative:",
    "Hi! A friend sent me this review of a movie and I can't tell if they liked it: {sentence}\nVerdict:",
    "Label the review below as positive or negative.\n{sentence}\nLabel:",
    "What is the tone of this film review? {sentence}",
    "Review text: {sentence}\nPolarity:",
    "Decide whether the following opinion is positive or negative. {sentence}",
    'Movie review:\n"{sentence}"\nOverall feeling:',
    "Determine the reviewer's attitude toward the movie.\n{sentence}\nAttitude:",
    "{sentence} -- positive or negative?",
    "Tell me if this critic was happy with the film: {sentence}",
    'How does the writer feel about the movie? "{sentence}"',
    "Identify the sentiment (positive/negative) of the text.\nText: {sentence}\nAnswer:",
    "Sort this review into positive or negative. {sentence} Category:",
    "Opinion: {sentence}\nThe opinion is",
    "Read the review and give its sentiment.\n{sentence}",
    "Would you call this review positive or negative? {sentence}",
    "Critic says: {sentence}\nMood:",
)

SENTIMENT_HELDOUT = (
    "Does this reviewer recommend the film? Reply positive or negative.\n{sentence}",
    "Film critique: {sentence}\nEmotional tone:",
    'Hey, was this person pleased or disappointed with the movie? "{sentence}" (positive/negative)',
    "{sentence}\nThumbs up or thumbs down? Say positive or negative:",
    "Judge the feeling expressed in this comment about a film: {sentence}",
    "Rate the polarity of the user review below.\n{sentence}\nRating:",
    'Audience comment - "{sentence}" - good or bad overall?',
    "Was the viewer's reaction favorable? {sentence}\nReaction:",
)
