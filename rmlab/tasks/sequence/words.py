"""The small vocabularies the template tasks draw from: a sentiment lexicon, names, places, and the toy language of
``translation``. Shipped as code so nothing is downloaded; every list holds distinct lowercase words (names and
places capitalised) with no word in two lists of the same task.
"""

# --- sentiment lexicon (text_classification) ------------------------------------------------------------------------

POSITIVE = (
    "good", "great", "excellent", "wonderful", "lovely", "superb", "delightful", "charming", "brilliant", "pleasant",
    "fantastic", "amazing", "enjoyable", "tasty", "friendly", "beautiful", "perfect", "fresh", "clever", "cosy",
)
NEGATIVE = (
    "bad", "awful", "terrible", "horrible", "poor", "boring", "dull", "rude", "bland", "dirty",
    "disappointing", "dreadful", "nasty", "stale", "noisy", "ugly", "broken", "slow", "greasy", "cold",
)
NEUTRAL = (
    "long", "short", "new", "old", "large", "small", "red", "blue", "wooden", "square",
    "local", "recent", "busy", "quiet", "simple", "modern", "plain", "tall", "round", "green",
)
REVIEWED = (
    "film", "book", "hotel", "meal", "soup", "service", "room", "concert", "game", "phone",
    "staff", "pizza", "cafe", "show", "album", "trip", "bike", "course", "museum", "garden",
)
INTENSIFIERS = ("very", "really", "quite", "truly", "rather")

# --- people, places, things (qa, summarisation, dialogue) -----------------------------------------------------------

NAMES = (
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Irene", "Jonas",
    "Kira", "Leo", "Maya", "Nils", "Olga", "Pablo", "Rosa", "Sami", "Tara", "Umar",
    "Vera", "Walt", "Xenia", "Yusuf", "Zoe", "Aiko", "Bruno", "Chloe", "Dmitri", "Emma",
)
CITIES = (
    "Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Dakar", "Quito", "Hanoi", "Perth", "Rome",
    "Delhi", "Accra", "Seoul", "Lyon", "Porto", "Minsk", "Havana", "Nairobi", "Riga", "Austin",
)
JOBS = ("teacher", "doctor", "baker", "pilot", "nurse", "farmer", "lawyer", "painter", "chemist", "plumber",
        "dentist", "writer", "tailor", "judge", "miner")
PETS = ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "pony", "lizard", "ferret")
FOODS = ("pasta", "rice", "soup", "curry", "salad", "bread", "cheese", "noodles", "tacos", "dumplings")
COLOURS = ("red", "blue", "green", "black", "white", "yellow", "silver", "orange", "purple", "brown")
EVENTS = ("meeting", "concert", "lecture", "festival", "wedding", "match", "workshop", "party", "exhibition", "race")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
GENRES = ("jazz", "rock", "classical", "pop", "blues", "reggae", "folk", "techno", "soul", "country")
DESTINATIONS = ("the airport", "the station", "the museum", "the harbour", "the hospital", "the stadium",
                "the library", "the market", "the university", "the beach")

# --- the toy language of ``translation``: an English word -> its word there ------------------------------------------

TOY_NOUNS = {
    "dog": "vor", "cat": "miku", "bird": "tesa", "horse": "galo", "fish": "nupi", "child": "rel", "farmer": "dumo",
    "king": "zaro", "girl": "lina", "boy": "peto", "teacher": "sabo", "doctor": "kimu", "wolf": "urra",
    "bear": "bomo", "mouse": "tiki", "fox": "resh", "baker": "panu", "sailor": "mavo", "queen": "zira", "frog": "kwa",
}
TOY_ADJECTIVES = {
    "big": "gran", "small": "pim", "old": "vek", "young": "nov", "red": "ruj", "black": "nor", "white": "bla",
    "happy": "jolu", "sad": "tris", "fast": "rap", "lazy": "lenu", "clever": "sagi",
}
TOY_VERBS = {
    "sees": "vida", "likes": "ama", "chases": "kura", "finds": "trova", "helps": "juta", "calls": "voka",
    "follows": "sega", "watches": "mira", "pushes": "pusa", "feeds": "nuta",
}
TOY_ADVERBS = {"quickly": "rapi", "slowly": "lenti", "often": "spesu", "again": "ankor", "quietly": "kalmi",
               "today": "oji"}
TOY_SUBJECT = "ga"  # the toy language marks the subject and the object with particles after the noun phrase
TOY_OBJECT = "o"
