"""The generator's vocabulary: intents per category, their paraphrase templates, and the follow-up intents.

Kept apart from the sampling code because it is data. Every string here was written for cachebench. The shapes
follow the category-aware semantic caching paper (arXiv 2510.26835): code intents are a grid of task x language,
so many classes differ in one slot and embed close together (dense); conversation intents are open chit-chat and
advice spread over unrelated topics (sparse); factual intents are relations over entities with stable answers;
time-sensitive intents ask for a value (a price, a score, the weather) that changes while the stream runs.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("code", "conversation", "factual", "time-sensitive")


@dataclass(frozen=True)
class Intent:
    """One equivalence class before any follow-up: its id, its paraphrase templates (already filled) and answer."""

    class_id: str
    category: str
    paraphrases: tuple[str, ...]
    answer: str
    slots: tuple[tuple[str, str], ...] = ()  # e.g. (("language", "Python"),): what follow-ups may refer to
    axes: tuple[str, ...] = ()  # popularity factors (code: task, language); empty: the class alone


# --- code: task x language ------------------------------------------------------------------------------------

# (key, imperative phrase, terse search phrase)
CODE_TASKS: tuple[tuple[str, str, str], ...] = (
    ("reverse-list", "reverse a list", "reverse list"),
    ("reverse-string", "reverse a string", "reverse string"),
    ("reverse-words", "reverse the words in a sentence", "reverse words in sentence"),
    ("sort-numbers", "sort a list of numbers", "sort list of numbers"),
    ("sort-dict-by-value", "sort a dictionary by value", "sort dict by value"),
    ("sort-objects-by-field", "sort a list of objects by a field", "sort objects by field"),
    ("sort-strings-nocase", "sort strings alphabetically ignoring case", "sort strings case insensitive"),
    ("dedupe-list", "remove duplicates from a list", "remove duplicates list"),
    ("strip-whitespace", "remove whitespace from a string", "strip whitespace string"),
    ("read-lines", "read a file line by line", "read file line by line"),
    ("read-csv", "read a CSV file", "read csv file"),
    ("parse-json", "parse a JSON string", "parse json string"),
    ("write-json", "write JSON to a file", "write json to file"),
    ("split-string", "split a string by a delimiter", "split string by delimiter"),
    ("str-to-int", "convert a string to an integer", "convert string to int"),
    ("int-to-str", "convert an integer to a string", "convert int to string"),
    ("contains-substring", "check if a string contains a substring", "check string contains substring"),
    ("uppercase", "convert a string to uppercase", "convert string to uppercase"),
    ("merge-dicts", "merge two dictionaries", "merge two dicts"),
    ("concat-lists", "concatenate two lists", "concatenate lists"),
    ("flatten-list", "flatten a nested list", "flatten nested list"),
    ("count-occurrences", "count occurrences of an element in a list", "count occurrences in list"),
    ("max-of-list", "find the maximum value in a list", "find max value in list"),
    ("min-of-list", "find the minimum value in a list", "find min value in list"),
    ("key-exists", "check if a key exists in a dictionary", "check key in dict"),
    ("iterate-dict", "iterate over a dictionary", "loop over dict"),
    ("current-datetime", "get the current date and time", "get current date and time"),
    ("http-get", "make an HTTP GET request", "send http get request"),
    ("random-number", "generate a random number", "generate random number"),
    ("time-function", "measure how long a function takes to run", "measure function runtime"),
    ("file-exists", "check if a file exists", "check file exists"),
    ("make-directory", "create a directory", "create directory"),
    ("env-var", "read an environment variable", "read env variable"),
    ("sleep", "pause execution for one second", "sleep one second"),
)

# (display name, lowercase search form)
LANGUAGES: tuple[tuple[str, str], ...] = (
    ("Python", "python"),
    ("JavaScript", "javascript"),
    ("Java", "java"),
    ("Go", "golang"),
    ("Rust", "rust"),
    ("C++", "c++"),
    ("TypeScript", "typescript"),
    ("Ruby", "ruby"),
)

CODE_TEMPLATES: tuple[str, ...] = (
    "{Do} in {lang}",
    "How do I {do} in {lang}?",
    "{lang}: {terse}",
    "What's the best way to {do} in {lang}?",
    "how to {terse} {lang_lc}",
    "Can you show me how to {do} using {lang}?",
    "Write {lang} code to {do}.",
    "In {lang}, how would I {do}?",
    "{lang_lc} {terse} example",
    "I need to {do} in {lang}. How?",
)


def code_intents() -> list[Intent]:
    """One class per (task, language): slot variants differ in one word and must not share a response. Popularity
    is a product of a task ranking and a language ranking, so the popular tasks are asked in the popular languages
    and their slot variants sit close together in the stream too (the dense clusters the paper describes)."""
    intents = []
    for key, do, terse in CODE_TASKS:
        for lang, lang_lc in LANGUAGES:
            fill = {"do": do, "Do": do[0].upper() + do[1:], "terse": terse, "lang": lang, "lang_lc": lang_lc}
            intents.append(Intent(
                class_id=f"code:{key}:{lang_lc}",
                category="code",
                paraphrases=tuple(template.format(**fill) for template in CODE_TEMPLATES),
                answer=f"[{lang}] how to {do}: answer for code:{key}:{lang_lc}",
                slots=(("language", lang),),
                axes=(f"task:{key}", f"language:{lang_lc}"),
            ))
    return intents


# --- conversation: frames x open topics -------------------------------------------------------------------------

CONVERSATION_FRAMES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("tips", (
        "Any tips for {t}?",
        "I could use some advice on {t}.",
        "What helps with {t}?",
        "I'm struggling with {t}, any suggestions?",
        "How do people get better at {t}?",
        "What would you suggest for {t}?",
    ), (
        "falling asleep faster", "staying motivated to exercise", "making new friends as an adult",
        "dealing with a difficult coworker", "preparing for a job interview", "saving money on groceries",
        "learning a new language", "keeping houseplants alive", "getting over a breakup", "speaking in public",
        "staying focused while studying", "planning a birthday party", "cooking for one person", "waking up early",
        "reducing screen time", "writing a cover letter", "asking for a raise", "travelling on a budget",
        "training a puppy", "decluttering a small apartment", "handling stress before exams", "starting a journal",
        "running a first marathon", "moving to a new city", "talking to teenagers", "being a better listener",
        "getting started with painting", "choosing a gift for my dad", "staying warm in winter",
        "taking better photos with a phone", "negotiating rent", "drinking more water", "learning to swim",
        "keeping in touch with old friends", "making small talk at parties", "fixing my posture",
        "eating less sugar", "growing tomatoes on a balcony", "flying with a toddler", "quitting caffeine",
        "keeping a budget", "cleaning the oven", "staying calm in traffic", "meditating every day",
        "reading more books", "remembering people's names", "writing a wedding toast", "packing light",
        "going back to school at forty", "hosting a dinner party", "choosing running shoes", "starting a podcast",
        "learning chess", "caring for a sick cat", "avoiding procrastination", "finding a good dentist",
    )),
    ("feelings", (
        "I've been feeling {t} lately.",
        "Lately I feel {t}. What should I do?",
        "I'm {t} today, can we talk?",
        "Feeling kind of {t}, any thoughts?",
    ), (
        "bored", "lonely", "anxious about the future", "unmotivated", "overwhelmed at work", "homesick",
        "nervous about a date", "stuck in a rut", "jealous of my friends", "burned out", "restless at night",
        "proud of myself", "excited about my new job", "guilty about skipping the gym", "confused about my career",
        "nostalgic about school",
    )),
    ("recommend", (
        "Can you recommend {t}?",
        "I'm looking for {t}, any ideas?",
        "Suggest {t}, please.",
        "Got a recommendation for {t}?",
        "Help me pick {t}.",
    ), (
        "a book for a long flight", "a board game for four people", "a podcast about history",
        "a movie for a rainy evening", "a hobby I can do at home", "a weekend trip near the mountains",
        "a vegetarian dinner idea", "a name for my cat", "a song to wake up to", "a gift for a coworker",
        "a cozy mystery series", "a card game for kids", "a houseplant that needs little light",
        "a workout for beginners", "a documentary about space", "a dessert without an oven",
        "a travel backpack", "a first telescope", "a relaxing video game", "a recipe with chickpeas",
        "a beach for snorkelling", "a comedy special", "a language learning app", "a jazz album for beginners",
        "a city for a winter break", "a cheap date idea",
    )),
    ("opinion", (
        "What do you think about {t}?",
        "Thoughts on {t}?",
        "What's your take on {t}?",
        "How do you feel about {t}?",
        "Do you have an opinion on {t}?",
    ), (
        "pineapple on pizza", "working from home", "morning people", "social media", "electric cars",
        "reality TV", "cats versus dogs", "summer versus winter", "camping", "online dating",
        "video games as art", "tipping culture", "open-plan offices", "audiobooks", "minimalism", "superhero movies",
        "daylight saving time", "self-driving cars", "homework for young kids", "standing desks", "fast fashion",
        "space tourism", "four-day work weeks",
    )),
    ("poem", (
        "Write a short poem about {t}.",
        "Could you compose a little poem about {t}?",
        "A poem about {t}, please.",
        "I'd love a few lines of verse about {t}.",
    ), (
        "the ocean", "a lost sock", "Monday mornings", "autumn leaves", "the moon", "rain in the city",
        "an old lighthouse", "the first snow", "a quiet library", "a sunrise over the hills",
        "my grandmother's kitchen", "a train at midnight", "spring blossoms", "an empty stadium", "fireflies",
        "the last day of summer", "a cup of tea", "city lights",
    )),
    ("joke", (
        "Tell me a joke about {t}.",
        "Know any jokes about {t}?",
        "Make me laugh with a joke about {t}.",
        "Got a funny one about {t}?",
    ), (
        "a robot chef", "a grumpy cat", "a time traveler", "a forgetful wizard", "accountants", "penguins",
        "pirates", "dentists", "a talking toaster", "vegetables", "a confused GPS", "dinosaurs", "programmers",
        "ghosts", "a nervous astronaut", "cowboys", "a clumsy ninja", "mathematicians",
    )),
    ("story", (
        "Tell me a short story about {t}.",
        "Make up a bedtime story about {t}.",
        "Can you invent a tiny story about {t}?",
        "I want a quick story featuring {t}.",
    ), (
        "a sleepy dragon", "a paper boat", "a busy bee", "a forgotten umbrella", "a brave little mouse",
        "a kite that wanted to fly higher", "a snowman in summer", "two rival bakers", "a lonely robot",
        "a magic bicycle", "a treasure map", "a friendly volcano", "a cloud that could not rain", "a shy giraffe",
        "an old clockmaker", "a tiny spaceship", "a whale who sings", "a squirrel planning for winter",
    )),
    ("eli5", (
        "Explain {t} like I'm five.",
        "Can you explain {t} in simple words?",
        "I never understood {t}. Help?",
        "ELI5: {t}",
    ), (
        "why the sky is blue", "how rainbows form", "what a mortgage is", "how vaccines work", "why cats purr",
        "how airplanes stay up", "what inflation is", "how the internet works", "why we dream",
        "how bees make honey", "why the ocean is salty", "how a fridge keeps things cold",
        "why leaves change color", "how tides work", "what a black hole is", "how credit scores work",
        "how batteries work", "why we have seasons", "what DNA is", "how magnets work", "why bread rises",
        "why we yawn", "how recycling works",
    )),
    ("howto", (
        "How do I {t}?",
        "What's the easiest way to {t}?",
        "Can you walk me through how to {t}?",
        "I've never learned to {t}. How does it go?",
    ), (
        "tie a tie", "change a flat tire", "iron a shirt", "sew on a button", "fold a fitted sheet",
        "unclog a drain", "jump-start a car", "write a thank-you note", "set up a fish tank", "braid hair",
        "whistle with my fingers", "pick a ripe avocado", "sharpen a kitchen knife", "hang a picture straight",
        "parallel park", "start a campfire", "make cold brew coffee", "read a nutrition label",
        "remove a red wine stain", "wrap a present neatly", "plant a tree", "paint a room", "bleed a radiator",
        "pack a suitcase", "carve a pumpkin", "descale a kettle", "tune a guitar", "polish leather shoes",
    )),
    ("rather", (
        "Would you rather {t}?",
        "Quick question: would you rather {t}?",
        "Which would you pick: {t}?",
    ), (
        "fly or be invisible", "live by the sea or in the mountains", "read minds or see the future",
        "never use a phone again or never watch TV again", "have a cat or a dog", "explore space or the deep ocean",
        "always be too hot or too cold", "speak every language or play every instrument",
        "live in the past or the future", "have a personal chef or a personal driver",
        "give up coffee or chocolate", "travel by train or by plane", "be famous or be rich",
        "only eat pizza or only eat pasta", "talk to animals or breathe underwater",
    )),
    ("pep", (
        "Give me a pep talk before {t}.",
        "I need some encouragement for {t}.",
        "Can you cheer me on for {t}?",
        "Say something motivating about {t}.",
    ), (
        "my driving test", "a big football match", "my first day at a new job", "a piano recital",
        "a difficult conversation with my boss", "my thesis defense", "a job interview tomorrow",
        "my first half marathon", "moving abroad alone", "a stand-up comedy open mic", "my final exams",
        "asking someone out", "a long hospital stay", "starting my own business", "my wedding speech",
    )),
    ("curious", (
        "What's something surprising about {t}?",
        "Tell me something I don't know about {t}.",
        "Share an odd fact about {t}.",
        "What's the weirdest thing about {t}?",
    ), (
        "octopuses", "ancient Rome", "volcanoes", "honey", "the human brain", "sloths", "the Eiffel Tower",
        "deep sea fish", "bananas", "Antarctica", "crows", "the Sahara", "lightning", "mushrooms", "Venus",
        "the Great Wall", "sharks", "chess history", "coral reefs", "owls", "glaciers", "Vikings",
        "hummingbirds", "the Amazon rainforest", "ants",
    )),
    ("comfort", (
        "What can I say to a friend who {t}?",
        "How do I comfort someone who {t}?",
        "My friend {t}. How can I support them?",
    ), (
        "just lost their job", "failed an important exam", "is going through a divorce", "lost a pet",
        "is nervous about surgery", "feels lonely after moving", "did not get into college",
        "is grieving a parent", "got rejected by a publisher", "is stressed about money", "had a miscarriage",
        "is recovering from an injury", "broke up with their partner", "is caring for a sick parent",
    )),
    ("describe", (
        "Describe {t} to someone who has never experienced it.",
        "How would you describe {t} in words?",
        "Put {t} into words for me.",
    ), (
        "the smell of rain", "the color blue", "the taste of coffee", "snow falling at night",
        "the sound of the sea", "a thunderstorm", "the feeling of jet lag", "a crowded market",
        "the first warm day of spring", "floating in a pool", "fresh bread from the oven", "a sunset at the beach",
    )),
    ("plan", (
        "Help me plan {t}.",
        "Can you help me organize {t}?",
        "I want to plan {t}. Where do I start?",
        "Let's plan {t} together.",
    ), (
        "a three-day trip to Rome", "a surprise dinner", "my meals for the week", "a study schedule",
        "a small wedding", "a vegetable garden", "a kid's birthday party", "a road trip along the coast",
        "a picnic in the park", "a home office makeover", "a family reunion", "a camping weekend",
        "a retirement party", "a beach holiday", "a book club meeting", "a charity bake sale",
    )),
)

SMALL_TALK: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("day", ("How's your day going?", "How has your day been so far?", "Having a good day?")),
    ("color", ("What's your favorite color?", "Which color do you like best?", "Do you have a favorite color?")),
    ("tired", ("Do you ever get tired?", "Don't you get tired of talking?", "Can you feel tired?")),
    ("weekend", ("What should I do this weekend?", "Any ideas for my weekend?", "How should I spend Saturday?")),
    ("fun-fact", ("Tell me a fun fact.", "Share something interesting with me.", "Know any cool trivia?")),
    ("hello", ("Hi there, how are you?", "Hello! How are you doing?", "Hey, what's up?")),
    ("thanks", ("Thanks for your help earlier!", "I appreciate the help.", "Thank you, that was useful.")),
    ("name", ("What should I call you?", "Do you have a name?", "What's your name?")),
    ("dream", ("What would you do with a million dollars?", "If you won the lottery, what then?",
               "How would you spend a fortune?")),
    ("bored-game", ("Let's play a word game.", "Can we play a game?", "I want to play something with you.")),
    ("music", ("What music do you like?", "Do you have a favorite kind of music?", "Which songs do you enjoy?")),
    ("advice-life", ("What's the best advice you know?", "Give me one piece of life advice.",
                     "Any wisdom for today?")),
)


def conversation_intents() -> list[Intent]:
    """Open chit-chat and advice: one class per (frame, topic) plus fixed small talk; topics are far apart."""
    intents = []
    for frame, templates, topics in CONVERSATION_FRAMES:
        for topic in topics:
            key = "-".join(topic.lower().replace("'", "").split())
            intents.append(Intent(
                class_id=f"conv:{frame}:{key}",
                category="conversation",
                paraphrases=tuple(template.format(t=topic) for template in templates),
                answer=f"(chat reply) {frame} about {topic}",
                slots=(("topic", topic),),
            ))
    for key, lines in SMALL_TALK:
        intents.append(Intent(class_id=f"conv:smalltalk:{key}", category="conversation", paraphrases=lines,
                              answer=f"(chat reply) small talk: {key}"))
    return intents


# --- factual: relation x entity, stable answers ----------------------------------------------------------------

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Brazil", "Brasília"),
    ("Argentina", "Buenos Aires"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Mexico", "Mexico City"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("South Korea", "Seoul"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("New Zealand", "Wellington"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Czech Republic", "Prague"), ("Morocco", "Rabat"),
    ("Colombia", "Bogotá"),
)
CAPITAL_TEMPLATES = (
    "What is the capital of {x}?", "capital of {x}", "Which city is the capital of {x}?", "{x} capital city?",
    "Tell me the capital of {x}.", "What's {x}'s capital?",
)

INVENTIONS: tuple[tuple[str, str], ...] = (
    ("the telephone", "Alexander Graham Bell"), ("the World Wide Web", "Tim Berners-Lee"),
    ("the printing press", "Johannes Gutenberg"), ("the airplane", "the Wright brothers"),
    ("dynamite", "Alfred Nobel"), ("the periodic table", "Dmitri Mendeleev"),
    ("the Python programming language", "Guido van Rossum"), ("the Linux kernel", "Linus Torvalds"),
    ("the polio vaccine", "Jonas Salk"), ("the phonograph", "Thomas Edison"),
)
INVENTION_TEMPLATES = (
    "Who invented {x}?", "Who is credited with creating {x}?", "inventor of {x}", "Who came up with {x}?",
    "Who was behind {x}?",
)

CONVERSIONS: tuple[tuple[str, str, str], ...] = (
    ("feet", "a mile", "5,280"), ("centimeters", "an inch", "2.54"), ("grams", "an ounce", "about 28.35"),
    ("pounds", "a kilogram", "about 2.205"), ("seconds", "a day", "86,400"), ("meters", "a kilometer", "1,000"),
    ("cups", "a quart", "4"), ("ounces", "a pound", "16"), ("kilometers", "a mile", "about 1.609"),
    ("minutes", "a week", "10,080"), ("milliliters", "a liter", "1,000"), ("inches", "a foot", "12"),
    ("inches", "a yard", "36"), ("feet", "a yard", "3"), ("centimeters", "a meter", "100"),
    ("millimeters", "a meter", "1,000"), ("grams", "a kilogram", "1,000"), ("seconds", "an hour", "3,600"),
    ("minutes", "a day", "1,440"), ("hours", "a week", "168"),
)
CONVERSION_TEMPLATES = (
    "How many {a} are in {b}?", "{b} in {a}?", "Convert {b} to {a}.", "How many {a} make {b}?",
    "number of {a} in {b}",
)

ELEMENTS: tuple[tuple[str, str], ...] = (
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"), ("lead", "Pb"),
    ("copper", "Cu"), ("mercury", "Hg"), ("tin", "Sn"), ("tungsten", "W"), ("helium", "He"), ("oxygen", "O"),
)
ELEMENT_TEMPLATES = (
    "What is the chemical symbol for {x}?", "{x} chemical symbol", "What's the element symbol of {x}?",
    "How is {x} written on the periodic table?", "symbol for the element {x}",
)

BOOKS: tuple[tuple[str, str], ...] = (
    ("Pride and Prejudice", "Jane Austen"), ("1984", "George Orwell"), ("Moby-Dick", "Herman Melville"),
    ("War and Peace", "Leo Tolstoy"), ("Don Quixote", "Miguel de Cervantes"), ("Hamlet", "William Shakespeare"),
    ("One Hundred Years of Solitude", "Gabriel García Márquez"), ("Frankenstein", "Mary Shelley"),
    ("The Great Gatsby", "F. Scott Fitzgerald"), ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("Jane Eyre", "Charlotte Brontë"), ("The Hobbit", "J. R. R. Tolkien"),
)
BOOK_TEMPLATES = (
    "Who wrote {x}?", "author of {x}", "Who is the author of {x}?", "{x} was written by whom?",
    "Which writer wrote {x}?",
)


def slug(text: str) -> str:
    """A class-id fragment: lowercase words of letters and digits joined by hyphens."""
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def factual_intents() -> list[Intent]:
    """Stable facts: one class per (relation, entity); entities of one relation are slot variants."""
    intents = []
    for country, capital in CAPITALS:
        intents.append(Intent(f"fact:capital:{slug(country)}", "factual",
                              tuple(t.format(x=country) for t in CAPITAL_TEMPLATES),
                              f"The capital of {country} is {capital}.", (("entity", country),)))
    for thing, who in INVENTIONS:
        intents.append(Intent(f"fact:inventor:{slug(thing)}", "factual",
                              tuple(t.format(x=thing) for t in INVENTION_TEMPLATES),
                              f"{thing[0].upper() + thing[1:]} is credited to {who}.", (("entity", thing),)))
    for unit, whole, amount in CONVERSIONS:
        intents.append(Intent(f"fact:convert:{slug(unit)}-in-{slug(whole)}", "factual",
                              tuple(t.format(a=unit, b=whole) for t in CONVERSION_TEMPLATES),
                              f"There are {amount} {unit} in {whole}.", (("entity", f"{unit} in {whole}"),)))
    for element, symbol in ELEMENTS:
        intents.append(Intent(f"fact:symbol:{slug(element)}", "factual",
                              tuple(t.format(x=element) for t in ELEMENT_TEMPLATES),
                              f"The chemical symbol for {element} is {symbol}.", (("entity", element),)))
    for book, author in BOOKS:
        intents.append(Intent(f"fact:author:{slug(book)}", "factual",
                              tuple(t.format(x=book) for t in BOOK_TEMPLATES),
                              f"{book} was written by {author}.", (("entity", book),)))
    return intents


# --- time-sensitive: values that change while the stream runs -----------------------------------------------------

ASSETS = ("bitcoin", "ethereum", "gold", "silver", "crude oil", "Apple stock", "Tesla stock", "Nvidia stock",
          "Amazon stock", "platinum", "copper", "natural gas")
ASSET_TEMPLATES = (
    "What's the price of {x} right now?", "{x} price now", "current {x} price", "How much is {x} trading at today?",
    "price of {x} at the moment",
)
TEAMS = ("Lakers", "Yankees", "Arsenal", "Real Madrid", "Bulls", "Cowboys", "Manchester United", "Red Sox",
         "Warriors", "Bayern Munich")
TEAM_TEMPLATES = (
    "What's the score of the {x} game?", "{x} score", "current score of the {x} game", "How is the {x} game going?",
    "live score {x} game",
)
CITIES = ("Paris", "Tokyo", "New York", "London", "Sydney", "Chicago", "Mumbai", "Berlin", "Toronto", "Seoul")
CITY_TEMPLATES = (
    "What's the weather in {x} right now?", "{x} weather now", "current weather in {x}",
    "How's the weather in {x} today?", "weather conditions in {x} at the moment",
)
TIME_SENSITIVE_KINDS = (("price", ASSETS, ASSET_TEMPLATES), ("score", TEAMS, TEAM_TEMPLATES),
                        ("weather", CITIES, CITY_TEMPLATES))


def time_sensitive_intents() -> list[Intent]:
    """Live values; the answer here is a label, the generator appends the value of the current time bucket."""
    intents = []
    for kind, entities, templates in TIME_SENSITIVE_KINDS:
        for entity in entities:
            intents.append(Intent(f"live:{kind}:{slug(entity)}", "time-sensitive",
                                  tuple(t.format(x=entity) for t in templates), f"{kind} of {entity}",
                                  (("entity", entity),)))
    return intents


def all_intents() -> dict[str, list[Intent]]:
    """Every base intent by category."""
    return {
        "code": code_intents(),
        "conversation": conversation_intents(),
        "factual": factual_intents(),
        "time-sensitive": time_sensitive_intents(),
    }


# --- follow-ups: generic texts whose meaning comes from the parent request ---------------------------------------

# (intent key, surface forms): the class of a follow-up is (parent class, intent key), so one text under two
# parents is two classes. "{other}" is filled from the parent's slot (another language for code).
FOLLOW_UPS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "code": (
        ("in-{other}", ("what about in {other}?", "and in {other}?", "how about {other}?")),
        ("faster", ("is there a faster way?", "can this be done faster?", "any quicker way to do it?")),
        ("complexity", ("what's the time complexity?", "how fast is it?", "and how fast is it?")),
        ("comments", ("can you add comments?", "add comments to that please", "explain it line by line")),
        ("example", ("show me an example", "give me an example", "example please")),
    ),
    "conversation": (
        ("more", ("tell me more", "go on", "tell me more about that")),
        ("why", ("why is that?", "why do you say so?", "how come?")),
        ("example", ("can you give an example?", "for example?", "like what?")),
        ("shorter", ("can you make it shorter?", "shorter please", "summarize that")),
    ),
    "factual": (
        ("more", ("tell me more", "tell me more about it", "anything else about it?")),
        ("sure", ("are you sure?", "is that right?", "really?")),
        ("source", ("where can I read more?", "what's your source?", "where is that from?")),
    ),
    "time-sensitive": (
        ("change", ("how much has it changed today?", "has it changed since this morning?",
                    "what's the change since morning?")),
        ("yesterday", ("and yesterday?", "what was it yesterday?", "how about yesterday?")),
        ("more", ("tell me more", "any details?", "more details please")),
    ),
}
