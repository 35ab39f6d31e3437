"""The demo site's content: "Marginalia Books", a few hundred linked pages generated from a fixed seed.

"Marginalia Books" is a small fake bookshop: home, catalogue, ten categories of
paginated listings, 260 book pages with blurbs, a quotes section, about and contact
pages.  It also carries what a crawl should visibly cope with: a robots.txt that
disallows /private/ (three linked private pages), a 301 from /old-catalogue, one link
to a missing page and a PDF.  Links mix absolute, relative and #fragment forms.
Everything is derived from a fixed seed, so DEMO_EXPECTED holds for every build.
"""

from __future__ import annotations

import html
import http
import random
import unicodedata
from dataclasses import dataclass

__all__ = ["DEMO_EXPECTED", "HTML", "SHOP_NAME", "DemoSite", "Page", "build_demo_site"]

SHOP_NAME = "Marginalia Books"

# What a robots-obeying crawl of the whole site from "/" finds (distinct URLs, fragments
# stripped).  tests/test_demo_site.py re-derives these by walking the served site.
DEMO_EXPECTED: dict[str, int] = {
    "pages": 301,  # HTML pages served 200, allowed by robots.txt (the redirect target counted once)
    "disallowed": 3,  # /private/* pages linked from the site, skipped by robots.txt
    "redirects": 1,  # /old-catalogue → 301 → /catalogue/
    "not_found": 1,  # /catalogue/the-lost-folio/
    "non_html": 1,  # /files/brochure.pdf
}

HTML = "text/html; charset=utf-8"
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
_SEED = 1851
_BOOKS_PER_CATEGORY = 26
_PER_LISTING_PAGE = 20
_PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
    b"% Marginalia Books - spring brochure (demo placeholder)\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n"
)

# (slug, name, blurb, vocabulary that only this category's books use, so searches discriminate)
_CATEGORIES: list[tuple[str, str, str, list[str]]] = [
    ("fiction", "Fiction", "Novels of families, friendships and quiet revolutions.",
     ["an inheritance", "an estranged sister", "a family farm", "a small-town bakery", "a second marriage"]),
    ("mystery", "Mystery", "Detectives, alibis and locked rooms.",
     ["a detective inspector", "a locked-room death", "a missing heiress", "a poisoned teacup", "an unreliable alibi"]),
    ("science-fiction", "Science Fiction", "Starships, colonies and thinking machines.",
     ["a generation starship", "an android archivist", "a terraformed moon", "first contact", "time dilation"]),
    ("history", "History", "Empires, archives and ordinary lives of the past.",
     ["a medieval guild", "the Victorian railway", "a lost empire", "parish records", "wartime letters"]),
    ("poetry", "Poetry", "Sonnets, ballads and free verse.",
     ["a sonnet sequence", "sea ballads", "elegies", "haiku", "prose poems"]),
    ("travel", "Travel", "Journeys by rail, river and mountain pass.",
     ["a night train", "a mountain pass", "a river barge", "the coastal path", "a desert caravan"]),
    ("science", "Science", "Stars, cells and the people who study them.",
     ["black holes", "coral reefs", "gene editing", "plate tectonics", "quantum entanglement"]),
    ("philosophy", "Philosophy", "Old questions asked with new urgency.",
     ["free will", "stoic virtue", "the problem of induction", "personal identity", "moral luck"]),
    ("cookery", "Cookery", "Recipes from sourdough to saffron.",
     ["a sourdough starter", "saffron risotto", "preserved lemons", "slow-cooked ragù", "rye crispbread"]),
    ("childrens", "Children's", "Picture books and first chapter books.",
     ["a talking badger", "a treehouse club", "a runaway kite", "a dragon who could not roar", "the bedtime moon"]),
]  # fmt: skip

_ADJECTIVES = [
    "Silent", "Crimson", "Hidden", "Last", "Winter", "Paper", "Glass", "Forgotten", "Northern", "Midnight", "Salt",
    "Iron", "Quiet", "Wandering", "Golden", "Hollow", "Distant", "Burning", "Velvet", "Broken", "Lantern-lit", "Amber",
]  # fmt: skip
_NOUNS = [
    "Lighthouse", "Orchard", "Cartographer", "Garden", "River", "Archive", "Harbour", "Clockmaker",
    "Library", "Compass", "Meadow", "Observatory", "Lantern", "Tide", "Atlas", "Fox",
    "Bridge", "Telescope", "Kettle", "Almanac", "Ferryman", "Heron",
]  # fmt: skip
_PLACES = [
    "Ashford", "the Marsh", "Low Tide", "Kestrel Hill", "the Salt Roads", "Eastmoor",
    "the Far Shore", "Brightwater", "Old Quay", "the Northern Line", "Fenwick", "Greyhaven",
]  # fmt: skip
_FIRST = [
    "Ada", "Tomas", "Mirela", "Owen", "Priya", "Jonah", "Elif", "Callum",
    "Ines", "Rafael", "Hana", "Declan", "Sunniva", "Marek", "Lotte", "Femi",
]  # fmt: skip
_LAST = [
    "Hartley", "Okafor", "Lindqvist", "Moreau", "Castellanos", "Byrne",
    "Achterberg", "Nakamura", "Pryce", "Sørensen", "Adeyemi", "Vance",
]  # fmt: skip
_RATINGS = ["One", "Two", "Three", "Four", "Five"]
_SEASONS = ["spring", "summer", "autumn", "winter"]
_PRAISE = [
    "quietly devastating",
    "the most charming book of the year",
    "impossible to put down",
    "a small miracle of a book",
    "wise, funny and unexpectedly moving",
]

# (text, author, work): short, well-known passages from public-domain works
_QUOTES: list[tuple[str, str, str]] = [
    (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife.",
        "Jane Austen",
        "Pride and Prejudice",
    ),
    (
        "I declare after all there is no enjoyment like reading! "
        "How much sooner one tires of any thing than of a book!",
        "Jane Austen",
        "Pride and Prejudice",
    ),
    ("It was the best of times, it was the worst of times.", "Charles Dickens", "A Tale of Two Cities"),
    ("It is a far, far better thing that I do, than I have ever done.", "Charles Dickens", "A Tale of Two Cities"),
    ("Call me Ishmael.", "Herman Melville", "Moby-Dick"),
    ("Happy families are all alike; every unhappy family is unhappy in its own way.", "Leo Tolstoy", "Anna Karenina"),
    ("Reader, I married him.", "Charlotte Brontë", "Jane Eyre"),
    (
        "I am no bird; and no net ensnares me: I am a free human being with an independent will.",
        "Charlotte Brontë",
        "Jane Eyre",
    ),
    ("Whatever our souls are made of, his and mine are the same.", "Emily Brontë", "Wuthering Heights"),
    ("We are all in the gutter, but some of us are looking at the stars.", "Oscar Wilde", "Lady Windermere's Fan"),
    ("The only way to get rid of a temptation is to yield to it.", "Oscar Wilde", "The Picture of Dorian Gray"),
    ("All the world's a stage, and all the men and women merely players.", "William Shakespeare", "As You Like It"),
    ("The course of true love never did run smooth.", "William Shakespeare", "A Midsummer Night's Dream"),
    ("Curiouser and curiouser!", "Lewis Carroll", "Alice's Adventures in Wonderland"),
    (
        "Why, sometimes I've believed as many as six impossible things before breakfast.",
        "Lewis Carroll",
        "Through the Looking-Glass",
    ),
    ("Hope is the thing with feathers that perches in the soul.", "Emily Dickinson", "Poems"),
    ("A thing of beauty is a joy for ever.", "John Keats", "Endymion"),
    ("I wandered lonely as a cloud.", "William Wordsworth", "Poems, in Two Volumes"),
    (
        "Work consists of whatever a body is obliged to do, and Play consists of whatever a body is not obliged to do.",
        "Mark Twain",
        "The Adventures of Tom Sawyer",
    ),
    ("What do we live for, if it is not to make life less difficult to each other?", "George Eliot", "Middlemarch"),
    ("Beware; for I am fearless, and therefore powerful.", "Mary Shelley", "Frankenstein"),
    ("To travel hopefully is a better thing than to arrive.", "Robert Louis Stevenson", "Virginibus Puerisque"),
]

_PRIVATE = {
    "/private/staff/": ("Staff rota", ["Opening shifts, till counts and the key-holder list. Not for the public."]),
    "/private/accounts/": ("Accounts", ["Supplier invoices and the monthly ledger."]),
    "/private/drafts/": ("Newsletter drafts", ["Unpublished reviews and next season's newsletter."]),
}
_MISSING = "/catalogue/the-lost-folio/"


@dataclass(frozen=True, slots=True)
class Page:
    """One response of the demo site; `location` is set on a redirect."""

    body: bytes
    content_type: str = HTML
    status: int = 200
    location: str | None = None


def _status_page(status: int, message: str) -> Page:
    phrase = http.HTTPStatus(status).phrase
    text = f"<!DOCTYPE html>\n<html><head><title>{status} {phrase}</title></head>"
    text += f"<body><h1>{status} {phrase}</h1>{html.escape(message)}</body></html>\n"
    return Page(text.encode(), status=status)


class DemoSite:
    """The demo's responses keyed by request target; any other target is a 404."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}

    def page(self, path: str, body: str | bytes, content_type: str = HTML) -> None:
        self.pages[path] = Page(body.encode() if isinstance(body, str) else body, content_type)

    def redirect(self, path: str, location: str) -> None:
        moved = _status_page(301, f"Moved to {location}")
        self.pages[path] = Page(moved.body, status=301, location=location)

    def get(self, path: str) -> Page:
        return self.pages.get(path) or _status_page(404, f"No page at {path}")


@dataclass(frozen=True, slots=True)
class _Book:
    slug: str
    title: str
    author: str
    category: int
    price: str
    rating: str
    stock: int
    upc: str
    paragraphs: tuple[str, ...]


def _slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()  # Brontë → bronte
    keep = "".join(c.lower() if c.isalnum() else "-" for c in ascii_text)
    return "-".join(filter(None, keep.split("-")))


def _esc(text: str) -> str:
    return html.escape(text)


def _layout(title: str, main: str) -> str:
    """The page chrome every demo page shares: title, nav, footer."""
    nav = "".join(
        f'<li><a href="{href}">{label}</a></li>'
        for href, label in [("/", "Home"), ("/catalogue/", "Catalogue"), ("/quotes/", "Quotes"),
                            ("/about/", "About us"), ("/contact/", "Contact")]
    )  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)} | {SHOP_NAME}</title>\n"
        f'<meta name="description" content="{_esc(title)} | {SHOP_NAME}, an independent bookshop by the harbour.">\n'
        "</head>\n<body>\n"
        f'<header><a class="brand" href="/">{SHOP_NAME}</a>\n<nav><ul>{nav}</ul></nav></header>\n'
        f"<main>\n<h1>{_esc(title)}</h1>\n{main}</main>\n"
        '<footer><p>Independent since 1987 &middot; <a href="/about/#history">Our history</a> &middot; '
        '<a href="/files/brochure.pdf">Spring brochure (PDF)</a></p></footer>\n'
        "</body>\n</html>\n"
    )


def _paras(paragraphs: list[str] | tuple[str, ...]) -> str:
    return "".join(f"<p>{_esc(p)}</p>\n" for p in paragraphs)


def _make_books(rng: random.Random) -> list[_Book]:
    books: list[_Book] = []
    slugs: set[str] = set()
    for cat, (_, cat_name, _, vocab) in enumerate(_CATEGORIES):
        for _ in range(_BOOKS_PER_CATEGORY):
            while True:  # redraw until the slug is new, so every book has its own URL
                adj, place = rng.choice(_ADJECTIVES), rng.choice(_PLACES)
                noun, noun2 = rng.sample(_NOUNS, 2)
                title = rng.choice([
                    f"The {adj} {noun}", f"{noun} of {place}", f"The {noun}'s {noun2}",
                    f"One {adj} Season in {place}", f"Tales of the {adj} {noun}",
                ])  # fmt: skip
                if _slugify(title) not in slugs:
                    slugs.add(_slugify(title))
                    break
            author = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
            theme, theme2 = rng.sample(vocab, 2)
            season, praise = rng.choice(_SEASONS), rng.choice(_PRAISE)
            paragraphs = (
                f"{title} is a {cat_name.lower()} title by {author}, set around {place} one {season}.",
                f"At its heart lie {theme} and {theme2}; readers who loved {author.split()[0]}'s earlier "
                f"work will find the same patience here, and new daring.",
                f"Booksellers' note: {praise}. Shelved in {cat_name}.",
            )
            upc = f"{rng.getrandbits(64):016x}"
            books.append(
                _Book(
                    slug=_slugify(title),
                    title=title,
                    author=author,
                    category=cat,
                    price=f"£{rng.randint(499, 2999) / 100:.2f}",
                    rating=rng.choice(_RATINGS),
                    stock=rng.randint(1, 22),
                    upc=upc,
                    paragraphs=paragraphs,
                )
            )
    return books


def build_demo_site() -> DemoSite:
    """The demo bookshop; deterministic, so DEMO_EXPECTED always describes it."""
    rng = random.Random(_SEED)
    books = _make_books(rng)
    by_cat: list[list[_Book]] = [[b for b in books if b.category == c] for c in range(len(_CATEGORIES))]
    site = DemoSite()
    site.page("/robots.txt", ROBOTS_TXT, "text/plain; charset=utf-8")

    # Home: featured books, sections, a staff-only link that robots.txt hides
    featured = rng.sample(books, 6)
    main = _paras(
        [
            f"Welcome to {SHOP_NAME}, a second-floor bookshop above the harbour with "
            f"{len(books)} titles in {len(_CATEGORIES)} sections.",
            "Browse the catalogue, read a few favourite quotations, or come and find us by the old quay.",
        ]
    )
    main += "<h2>Featured this week</h2>\n<ul>\n"
    main += "".join(
        f'<li><a href="/catalogue/{b.slug}/">{_esc(b.title)}</a> by {_esc(b.author)}</li>\n' for b in featured
    )
    main += "</ul>\n<h2>Sections</h2>\n<ul>\n"
    main += "".join(f'<li><a href="/catalogue/category/{slug}/">{name}</a></li>\n' for slug, name, _, _ in _CATEGORIES)
    main += '</ul>\n<p class="staff"><a href="/private/drafts/">Staff: newsletter drafts</a></p>\n'
    site.page("/", _layout("Welcome", main))

    # Catalogue index, plus the link to a book that never made it (404)
    main = _paras(["Every book we stock, by section."]) + "<ul>\n"
    for slug, name, blurb, _ in _CATEGORIES:
        main += f'<li><a href="category/{slug}/">{name}</a> ({_BOOKS_PER_CATEGORY} titles): {_esc(blurb)}</li>\n'
    main += f'</ul>\n<p>Coming soon: <a href="{_MISSING}">The Lost Folio</a>.</p>\n'
    site.page("/catalogue/", _layout("Catalogue", main))
    site.redirect("/old-catalogue", "/catalogue/")

    # Category listings: page 1 at the directory, then page-N.html; relative links throughout
    for cat, (slug, name, blurb, _) in enumerate(_CATEGORIES):
        chunks = [by_cat[cat][i : i + _PER_LISTING_PAGE] for i in range(0, _BOOKS_PER_CATEGORY, _PER_LISTING_PAGE)]
        for n, chunk in enumerate(chunks, start=1):
            main = _paras([blurb]) + "<ol>\n"
            main += "".join(
                f'<li><a href="../../{b.slug}/">{_esc(b.title)}</a> by {_esc(b.author)} &middot; {b.price}</li>\n'
                for b in chunk
            )
            main += '</ol>\n<p class="pager">'
            if n > 1:
                main += f'<a href="{"./" if n == 2 else f"page-{n - 1}.html"}">previous</a> '
            if n < len(chunks):
                main += f'<a href="page-{n + 1}.html">next</a>'
            main += f"</p>\n<p>Page {n} of {len(chunks)}</p>\n"
            path = f"/catalogue/category/{slug}/" + ("" if n == 1 else f"page-{n}.html")
            site.page(path, _layout(f"{name} (page {n})" if n > 1 else name, main))

    # Book pages: details, blurb, three related titles from the same section
    for book in books:
        slug, name, _, _ = _CATEGORIES[book.category]
        related = [b for b in rng.sample(by_cat[book.category], 4) if b is not book][:3]
        main = (
            f'<p class="author">by {_esc(book.author)}</p>\n'
            f"<table><tr><th>Price</th><td>{book.price}</td></tr>"
            f"<tr><th>Rating</th><td>{book.rating} stars</td></tr>"
            f"<tr><th>Availability</th><td>In stock ({book.stock} available)</td></tr>"
            f"<tr><th>UPC</th><td>{book.upc}</td></tr></table>\n"
            + _paras(book.paragraphs)
            + f'<p>Section: <a href="../category/{slug}/">{name}</a></p>\n<h2>You may also like</h2>\n<ul>\n'
            + "".join(f'<li><a href="/catalogue/{b.slug}/">{_esc(b.title)}</a></li>\n' for b in related)
            + "</ul>\n"
        )
        site.page(f"/catalogue/{book.slug}/", _layout(book.title, main))

    # Quotes: an index and one page per author
    authors = sorted({a for _, a, _ in _QUOTES})
    main = "<ul>\n" + "".join(
        f'<li><q>{_esc(q)}</q> &mdash; <a href="/quotes/author/{_slugify(a)}/">{_esc(a)}</a>, '
        f"<cite>{_esc(w)}</cite></li>\n"
        for q, a, w in _QUOTES
    )
    site.page("/quotes/", _layout("Favourite quotations", main + "</ul>\n"))
    for author in authors:
        mine = [(q, w) for q, a, w in _QUOTES if a == author]
        main = _paras([f"Lines from {author} that our booksellers keep coming back to."])
        main += "<ul>\n" + "".join(f"<li><q>{_esc(q)}</q> <cite>{_esc(w)}</cite></li>\n" for q, w in mine)
        main += '</ul>\n<p><a href="../../">All quotations</a></p>\n'
        site.page(f"/quotes/author/{_slugify(author)}/", _layout(author, main))

    about = _paras(
        [
            f"{SHOP_NAME} opened in 1987 in a former sail loft on the old quay, with four shelves "
            "of second-hand paperbacks and a kettle.",
            "Today we stock new and used books, host a monthly poetry evening and run a "
            "children's story hour every Saturday morning.",
        ]
    )
    about += '<h2 id="history">History</h2>\n' + _paras(
        [
            "The loft flooded in the great storm of 1999; the community rescued every book "
            "by hand and we reopened within a fortnight.",
        ]
    )
    about += (
        '<p>Looking for our <a href="/old-catalogue">old catalogue</a>? It has moved.</p>\n'
        '<p>Booksellers can find the <a href="/private/staff/">staff rota</a> here.</p>\n'
        '<p>Download our <a href="/files/brochure.pdf">spring brochure</a>.</p>\n'
    )
    site.page("/about/", _layout("About us", about))
    contact = _paras(
        [
            "Find us at 3 Old Quay, Greyhaven. Open Tuesday to Sunday, ten till six.",
            "Orders and enquiries: hello@marginalia.example. We post anywhere.",
        ]
    )
    contact += '<p><a href="/private/accounts/">Supplier accounts</a> (staff only).</p>\n'
    site.page("/contact/", _layout("Contact", contact))

    for path, (title, text) in _PRIVATE.items():
        site.page(path, _layout(title, _paras(text) + '<p><a href="/private/staff/">Staff rota</a></p>\n'))
    site.page("/files/brochure.pdf", _PDF, "application/pdf")
    return site
