"""Deterministic benchmark sites: HTML pages of about 15 KB with about 20 links each.

A site is a set of hosts, one loopback address per host, all on one port, served over http
or (the TLS twin, `scheme="https"`) https; the pages are the same but for their absolute URLs. Each host has
`pages_per_host` public pages, numbered 0..P-1, where page 0 is "/" and page i > 0 lives at
"/<section>/<slug>-<i>.html". Every host also serves a robots.txt that disallows
"/private/", and a few pages link to such private pages (which exist, so a crawler that
ignored robots.txt would store too many pages).

Links of page i (on its own host):
  * a navigation bar: "/" and the section hubs (pages 1..len(SECTIONS));
  * its children in a B-ary tree (pages i*B+1 .. i*B+B) and its parent, so every page is
    reachable from "/" in about log_B(P) hops;
  * random pages of the same host until the page has LINKS_PER_PAGE page links;
  * on multi-host sites, sometimes one absolute link to a page of another host;
  * a fragment link, a mailto link, and now and then a link to a private page.

Generation uses `random.Random` seeded from the site seed and the host index, so the same
arguments always give byte-identical files. `generate_site` writes the files to a folder,
checks that every public page is reachable from the seeds, and returns a `Site`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

SECTIONS: tuple[str, ...] = ("news", "docs", "blog", "products", "help")
BRANCHING = 4
LINKS_PER_PAGE = 18  # links to public pages of the same host (nav + tree + random)
PAGE_BYTES = 15_000
CROSS_HOST_PROBABILITY = 0.25
PRIVATE_EVERY = 25
PRIVATE_PAGES = 5
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"

_WORD_TEXT = (
    "crawler frontier politeness robots latency queue worker socket buffer header status "
    "request response parser anchor title meta canonical redirect timeout retry backoff "
    "archive index search storage record sqlite batch commit transaction vacuum schema "
    "network loopback address port host domain scheme path query fragment encoding charset "
    "document section article paragraph review report summary release changelog roadmap "
    "product service customer support account billing invoice order shipping return policy "
    "garden river mountain forest ocean valley meadow harbour island desert canyon glacier "
    "morning evening winter summer autumn spring weather season journey travel market city "
    "quickly slowly gently carefully simply rarely often always never sometimes together "
    "bright quiet ancient modern simple complex useful careful steady honest gentle rapid"
)
_WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """What to generate: `hosts` loopback addresses with `pages_per_host` pages each."""

    name: str
    hosts: tuple[str, ...]
    pages_per_host: int
    seed: int = 1
    scheme: str = "http"  # "https": the same pages, every absolute URL with https (the TLS twin)

    @property
    def label(self) -> str:
        """The name in reports: "single", or "single https" for the TLS twin."""
        return self.name if self.scheme == "http" else f"{self.name} {self.scheme}"

    @property
    def total_pages(self) -> int:
        """Public pages in the whole site: what a correct crawler stores."""
        return len(self.hosts) * self.pages_per_host


@dataclass(slots=True)
class Site:
    """A generated site on disk; `root/<host>/` holds one host's files."""

    spec: SiteSpec
    root: Path
    port: int
    seeds: list[str]
    urls: list[str] = field(default_factory=list)  # every public page, seeds first
    bytes_total: int = 0

    @property
    def expected_pages(self) -> int:
        """Pages a correct, robots-obeying crawler stores."""
        return self.spec.total_pages


def single_host_spec(pages: int, seed: int = 1, scheme: str = "http") -> SiteSpec:
    """One host (127.0.0.1) with `pages` pages."""
    return SiteSpec(name="single", hosts=("127.0.0.1",), pages_per_host=pages, seed=seed, scheme=scheme)


def multi_host_spec(hosts: int, pages_per_host: int, seed: int = 1, scheme: str = "http") -> SiteSpec:
    """`hosts` hosts on 127.0.0.2, 127.0.0.3, … with `pages_per_host` pages each."""
    if not 1 <= hosts <= 250:
        raise ValueError("hosts must be between 1 and 250 (127.0.0.2 … 127.0.0.251)")
    addresses = tuple(f"127.0.0.{2 + i}" for i in range(hosts))
    return SiteSpec(name="multi", hosts=addresses, pages_per_host=pages_per_host, seed=seed, scheme=scheme)


def page_path(i: int) -> str:
    """The URL path of public page i."""
    if i == 0:
        return "/"
    section = SECTIONS[i % len(SECTIONS)]
    slug = f"{_WORDS[(i * 7) % len(_WORDS)]}-{_WORDS[(i * 13 + 5) % len(_WORDS)]}"
    return f"/{section}/{slug}-{i}.html"


def _file_for(path: str) -> str:
    return "index.html" if path == "/" else path.lstrip("/")


def _sentence_pool(rng: random.Random, count: int = 400) -> list[str]:
    pool = []
    for _ in range(count):
        words = rng.choices(_WORDS, k=rng.randint(8, 18))
        pool.append(" ".join(words).capitalize() + ".")
    return pool


def _same_host_targets(i: int, pages: int, rng: random.Random) -> list[int]:
    """Targets of page i's same-host links: nav, tree children, parent, then random pages."""
    targets: list[int] = []
    seen: set[int] = set()

    def add(j: int) -> None:
        if 0 <= j < pages and j != i and j not in seen:
            seen.add(j)
            targets.append(j)

    for j in range(min(len(SECTIONS) + 1, pages)):
        add(j)
    for j in range(i * BRANCHING + 1, i * BRANCHING + BRANCHING + 1):
        add(j)
    if i > 0:
        add((i - 1) // BRANCHING)
    wanted = min(LINKS_PER_PAGE, pages - 1)
    while len(targets) < wanted:
        add(rng.randrange(pages))
    return targets


def _render_page(
    title: str,
    links: list[tuple[str, str]],
    sentences: list[str],
    rng: random.Random,
) -> str:
    """A page of about PAGE_BYTES: head, nav, paragraphs with the links spread inside, footer."""
    nav = links[: len(SECTIONS) + 1]
    body_links = links[len(SECTIONS) + 1 :]
    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="description" content="{sentences[0][:120]}">\n'
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "nav a{margin-right:1em}footer{color:#666}</style>\n</head>\n<body>\n"
        '<header id="top"><nav>'
        + "".join(f'<a href="{href}">{text}</a>' for href, text in nav)
        + f"</nav></header>\n<main>\n<h1>{title}</h1>\n"
    )
    foot = (
        '</main>\n<footer><p><a href="#top">Back to top</a> · '
        '<a href="mailto:webmaster@example.invalid">Contact</a></p></footer>\n</body>\n</html>\n'
    )
    budget = PAGE_BYTES - len(head) - len(foot)
    paragraphs: list[str] = []
    size = 0
    link_iter = iter(body_links)
    while size < budget:
        text = " ".join(rng.choices(sentences, k=rng.randint(4, 9)))
        link = next(link_iter, None)
        if link is not None:
            cut = text.find(" ", len(text) // 2)
            text = f'{text[:cut]} <a href="{link[0]}">{link[1]}</a>{text[cut:]}'
        paragraph = f"<p>{text}</p>\n"
        paragraphs.append(paragraph)
        size += len(paragraph)
    leftover = list(link_iter)
    if leftover:
        items = "".join(f'<li><a href="{href}">{text}</a></li>' for href, text in leftover)
        paragraphs.append(f"<h2>See also</h2>\n<ul>{items}</ul>\n")
    return head + "".join(paragraphs) + foot


def generate_site(spec: SiteSpec, root: Path, port: int) -> Site:
    """Write every host's pages and robots.txt under `root`; check reachability; return the Site."""
    root.mkdir(parents=True, exist_ok=True)
    pages = spec.pages_per_host
    scheme = spec.scheme
    seeds = [f"{scheme}://{host}:{port}/" for host in spec.hosts]
    site = Site(spec=spec, root=root, port=port, seeds=seeds)
    graph: dict[str, list[str]] = {}
    for host_index, host in enumerate(spec.hosts):
        rng = random.Random(f"{spec.seed}:{spec.name}:{host_index}")
        sentences = _sentence_pool(rng)
        base = f"{scheme}://{host}:{port}"
        host_dir = root / host
        (host_dir / "private").mkdir(parents=True, exist_ok=True)
        for section in SECTIONS:
            (host_dir / section).mkdir(exist_ok=True)
        (host_dir / "robots.txt").write_text(ROBOTS_TXT)
        for k in range(PRIVATE_PAGES):
            private = _render_page(f"Private {k}", [("/", "Home")], sentences, rng)
            (host_dir / "private" / f"doc-{k}.html").write_text(private)
        for i in range(pages):
            path = page_path(i)
            links: list[tuple[str, str]] = []
            for j in _same_host_targets(i, pages, rng):
                href = page_path(j)
                if j % 11 == 3:
                    href += "#comments"  # same page as without the fragment
                label = "Home" if j == 0 else f"{SECTIONS[j % len(SECTIONS)].title()} {j}"
                links.append((href, label))
            if len(spec.hosts) > 1 and rng.random() < CROSS_HOST_PROBABILITY:
                other = rng.choice([h for h in spec.hosts if h != host])
                j = rng.randrange(pages)
                links.append((f"{scheme}://{other}:{port}{page_path(j)}", f"Partner {other} {j}"))
            if i % PRIVATE_EVERY == PRIVATE_EVERY // 3:
                links.append((f"/private/doc-{i % PRIVATE_PAGES}.html", "Members only"))
            title = "Home" if i == 0 else f"{SECTIONS[i % len(SECTIONS)].title()} page {i}"
            html = _render_page(f"{title} · {host}", links, sentences, rng)
            data = html.encode()
            (host_dir / _file_for(path)).write_bytes(data)
            site.bytes_total += len(data)
            url = base + path
            site.urls.append(url)
            graph[url] = [urljoin(url, href).split("#", 1)[0] for href, _ in links]
    _check_reachable(site, graph)
    return site


def _check_reachable(site: Site, graph: dict[str, list[str]]) -> None:
    """Breadth-first from the seeds over public links; every public page must be reached."""
    seen = set(site.seeds)
    todo = deque(site.seeds)
    while todo:
        for target in graph.get(todo.popleft(), ()):
            if target in graph and target not in seen:
                seen.add(target)
                todo.append(target)
    missing = len(graph) - len(seen)
    if missing:
        raise RuntimeError(f"site generator bug: {missing} pages not reachable from the seeds")
    for url in graph:
        if urlsplit(url).path.startswith("/private/"):
            raise RuntimeError("site generator bug: a private page is listed as public")
