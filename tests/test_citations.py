"""Works are cited by one key list, the README's References: every key the code, the configs and
the documents cite is defined there, every defined key is cited, and no nickname is left."""

import re

from src.testing.compose import ROOT

KEY = re.compile(r"\[(?:[A-Z][A-Za-z]+(?:19|20)\d\d|PathMaskThesis)\]")
NICKNAMES = ("path-mask thesis", "Stuttgart paper", "Stuttgart authors", "FACT-2021 reimplementation")


def cited_files():
    yield from (p for d in ("src", "conf", "scripts") for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml"))
    yield from (ROOT / f for f in ("README.md", "RESULTS.md", "BENCHMARKS.md", "ARCHITECTURE.md"))


def test_every_cited_key_is_in_the_references_and_every_reference_is_cited():
    readme = (ROOT / "README.md").read_text()
    references = readme[readme.index("## References") :]
    defined = set(re.findall(r"^- \*\*(\[[^\]]+\])\*\*", references, flags=re.M))
    cited = {}
    for path in cited_files():
        text = path.read_text()
        if path.name == "README.md":
            text = text[: text.index("## References")] + "\n".join(
                line.split("**", 2)[-1] for line in references.splitlines()
            )
        for key in KEY.findall(text):
            cited.setdefault(key, path.relative_to(ROOT))
    assert not {k: str(p) for k, p in cited.items() if k not in defined}, "cited, not in README's References"
    assert defined <= set(cited), f"in References, cited nowhere: {sorted(defined - set(cited))}"


def test_no_nicknames_are_left():
    found = [
        f"{p.relative_to(ROOT)}: {n}" for p in cited_files() for n in NICKNAMES if n.lower() in p.read_text().lower()
    ]
    assert not found
