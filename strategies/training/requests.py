"""Chat-style requests the target answers to make its own training data (self-distillation).

Heads learn to predict what the target says, so most of the data should be the target answering the kind of
request it serves: a chat assistant's everyday and technical questions. These are built from our own templates
and topics, disjoint from the benchmark's prompts (bench/workloads/text.py CHAT_PROMPTS), so a head is never
measured on text it was trained on.
"""

from __future__ import annotations

TEMPLATES = (
    "Explain {topic} to someone who has never heard of it.",
    "Give three practical tips about {topic}.",
    "What are the advantages and disadvantages of {topic}?",
    "Write a short paragraph about {topic} for a school newsletter.",
    "Describe {topic} in a few sentences.",
    "What is a common mistake people make with {topic}, and how can they avoid it?",
    "Write a friendly message inviting a friend to try {topic}.",
    "Answer briefly: why does {topic} matter?",
    "Compare {topic} with a similar idea and say when each is better.",
    "List the first steps for a beginner who wants to learn about {topic}.",
    "Tell a very short story in which {topic} plays a part.",
    "Summarize what an expert would want a newcomer to know about {topic}.",
)

TOPICS = (
    "composting at home", "version control with git", "learning a second language", "saving money on groceries",
    "unit testing", "growing tomatoes on a balcony", "public transport in cities", "writing a cover letter",
    "the water cycle", "sorting algorithms", "keeping a daily journal", "electric cars", "time zones",
    "recursion in programming", "baking bread", "solar panels", "remote work", "the immune system",
    "password managers", "running a first marathon", "the history of the printing press", "volcanoes",
    "database indexes", "meditation", "recycling plastic", "caching in web applications", "photosynthesis",
    "planning a birthday party", "machine learning", "the rules of chess", "learning to play the guitar",
    "regular expressions", "healthy sleep habits", "the moon's phases", "budgeting for a vacation",
    "open source software", "coral reefs", "making a podcast", "binary numbers", "container shipping",
    "the stock market", "training a puppy", "cloud computing", "writing clear documentation", "earthquakes",
    "a vegetarian diet", "code reviews", "the solar system", "job interviews", "wind energy", "bird watching",
    "encryption", "public speaking", "honey bees", "spreadsheets", "the internet's routing", "first aid",
    "painting with watercolors", "climate and weather", "team meetings",
)


def training_requests(count: int) -> list[str]:
    """``count`` distinct requests, cycling topics fastest so neighbouring requests differ in subject and form."""
    total = len(TEMPLATES) * len(TOPICS)
    if count > total:
        raise ValueError(f"only {total} distinct training requests exist; asked for {count}")
    # A stride coprime with the template count walks every (template, topic) pair once.
    return [TEMPLATES[(i // len(TOPICS) + i) % len(TEMPLATES)].format(topic=TOPICS[i % len(TOPICS)])
            for i in range(count)]
