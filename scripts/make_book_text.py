"""Rebuild bench/data/botchan.txt.gz (the "book" perplexity text) from its source file.

  pip download --no-deps --no-binary :all: sentencepiece==0.2.3
  tar xzf sentencepiece-0.2.3.tar.gz sentencepiece-0.2.3/test/botchan.txt
  python3 scripts/make_book_text.py sentencepiece-0.2.3/test/botchan.txt bench/data/botchan.txt.gz

Keeps the book from its title page to "--(THE END)--"; drops the Project Gutenberg header, licence
and footer, the "Produced by" credit, and the transcriber's typo markers ([A]..[R]) with their list.
Line breaks stay as in the source (hard-wrapped, no blank lines), as PG-19 keeps them. The gzip has
no name and mtime 0, so the same source gives the same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import sys

SOURCE_SHA256 = "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7"


def book_text(raw: bytes) -> str:
    lines = raw.decode("utf-8-sig").replace("\r\n", "\n").split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith("*** START OF THIS PROJECT GUTENBERG EBOOK"))
    end = next(i for i, l in enumerate(lines) if l.strip() == "--(THE END)--")
    body = [l for l in lines[start + 1:end + 1] if not l.startswith("Produced by ")]
    text = "\n".join(body).strip() + "\n"
    text = re.sub(r" \(\[[A-Z]\]\)", "", text)  # "shape ([D])": where the original printed a kanji
    text = re.sub(r" ?\[[A-Z]\]", "", text)      # the other typo markers
    assert "gutenberg" not in text.lower() and not re.search(r"\[[A-Z]\]", text)
    return text


def main(src: str, dst: str) -> None:
    raw = open(src, "rb").read()
    got = hashlib.sha256(raw).hexdigest()
    if got != SOURCE_SHA256:
        sys.exit(f"{src}: sha256 {got}, expected {SOURCE_SHA256} (sentencepiece 0.2.3's test/botchan.txt)")
    text = book_text(raw)
    with open(dst, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as g:
        g.write(text.encode("utf-8"))
    print(f"{dst}: {len(text)} characters")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
