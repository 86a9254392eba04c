#!/usr/bin/env python3
"""Writes "what changed since the previous chapter": one coloured diff page per chapter.

    chapter_diffs.py CHAPTERS_DIR OUT_DIR 01-blocking-echo 02-thread-per-client ...

For each chapter after the first it writes, into OUT_DIR:
  chNN_diff.md    a Doxygen page (label chNN_diff) that includes the next file
  chNN_diff.html  the diff itself: a table of the files, then each file's changes,
                  unified, with the old and the new line numbers

Files are paired by their path in the chapter folder. Where a chapter splits a
platform's server into several files (chapter 8: echo_iocp.cpp becomes iocp/*.cpp),
the old file is compared with the new files read one after the other, in the order the
chapter's CMakeLists.txt lists them: the reorganisation then shows as the few lines that
really changed, not as one file deleted and six added.

Only Python's standard library (difflib, html) is used: the docs need nothing new.
"""
import difflib
import html
import sys
from pathlib import Path

CONTEXT = 3  # unchanged lines shown around each change

# A server's sources, in groups: the Windows server (one file echo_iocp.cpp, or the
# folder iocp/), its Linux twin (echo_uring.cpp or uring/), and, in the chapters without
# twins, the files at the top of the chapter folder other than main(), the client and the
# shared header.
GROUPS = {"iocp": "Windows server", "uring": "Linux server (io_uring)", "server": "The server"}
NOT_SERVER = {"main.cpp", "echo_client.cpp", "echo_server.h", "CMakeLists.txt"}


def chapter_files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def group_of(path: str):
    for key in ("iocp", "uring"):
        # Chapter 14 moves the server into engine/: engine/uring/ is still the Linux server.
        if path == f"echo_{key}.cpp" or path.startswith(f"{key}/") or path.startswith(f"engine/{key}/"):
            return key
    if "/" not in path and path not in NOT_SERVER and path.endswith((".cpp", ".h")):
        return "server"
    return None


def build_order(folder: Path, paths: list) -> list:
    """The files in the order the chapter's CMakeLists.txt names them; headers first."""
    listed = (folder / "CMakeLists.txt").read_text(encoding="utf-8") if (folder / "CMakeLists.txt").exists() else ""

    def key(path):
        at = listed.find(path)
        return (0 if path.endswith(".h") else 1, at if at >= 0 else len(listed), path)

    return sorted(paths, key=key)


def read_lines(path: Path) -> list:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def concatenated(folder: Path, paths: list) -> list:
    if len(paths) == 1:
        return read_lines(folder / paths[0])
    lines = []
    for path in paths:
        lines.append(f"// ===== {path} =====")
        lines.extend(read_lines(folder / path))
    return lines


def units(old_dir: Path, new_dir: Path) -> list:
    """(title, old lines, new lines) for every file or split platform that differs."""
    old, new = chapter_files(old_dir), chapter_files(new_dir)
    out, merged = [], set()
    for key, label in GROUPS.items():
        old_set = [p for p in old if group_of(p) == key]
        new_set = [p for p in new if group_of(p) == key]
        if not old_set or not new_set or sorted(old_set) == sorted(new_set):
            continue
        # Read as one only where the files are one program reorganised: a file split
        # into a folder (echo_iocp.cpp -> iocp/*), or sets that still share a file.
        # Otherwise (a new model with new files) each file stands on its own.
        split = key in ("iocp", "uring") and old_set == [f"echo_{key}.cpp"]
        if not split and not set(old_set) & set(new_set):
            continue
        old_order, new_order = build_order(old_dir, old_set), build_order(new_dir, new_set)
        title = f"{label}: {', '.join(old_order)} &rarr; {', '.join(new_order)} (read in build order)"
        out.append((title, concatenated(old_dir, old_order), concatenated(new_dir, new_order)))
        merged.update(old_set + new_set)
    for path in sorted(set(old) | set(new)):
        if path in merged:
            continue
        a = read_lines(old[path]) if path in old else []
        b = read_lines(new[path]) if path in new else []
        if a != b:
            state = "new" if path not in old else "removed" if path not in new else ""
            out.append((html.escape(path) + (f" <em>({state})</em>" if state else ""), a, b))
    return out


def hunks(a: list, b: list):
    return difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(CONTEXT)


def row(kind: str, old_no, new_no, text: str) -> str:
    sign = {"add": "+", "del": "-", "ctx": " "}[kind]
    return (f'<tr class="diff-{kind}"><td class="diff-no">{old_no or ""}</td>'
            f'<td class="diff-no">{new_no or ""}</td><td class="diff-sign">{sign}</td>'
            f'<td class="diff-code">{html.escape(text) or "&nbsp;"}</td></tr>')


def render_unit(index: int, title: str, a: list, b: list) -> tuple:
    rows, added, removed = [], 0, 0
    for group in hunks(a, b):
        first, last = group[0], group[-1]
        rows.append(f'<tr class="diff-hunk"><td colspan="4">@@ lines {first[1] + 1}-{last[2]} '
                    f'&rarr; {first[3] + 1}-{last[4]} @@</td></tr>')
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                rows += [row("ctx", i1 + k + 1, j1 + k + 1, a[i1 + k]) for k in range(i2 - i1)]
                continue
            rows += [row("del", i + 1, None, a[i]) for i in range(i1, i2)]
            rows += [row("add", None, j + 1, b[j]) for j in range(j1, j2)]
            removed += i2 - i1
            added += j2 - j1
    body = (f'<div class="diff-file" id="diff-{index}"><div class="diff-title">{title} '
            f'<span class="diff-count"><span class="diff-plus">+{added}</span> '
            f'<span class="diff-minus">&minus;{removed}</span></span></div>'
            f'<div class="diff-scroll"><table class="diff">{"".join(rows)}</table></div></div>')
    return body, added, removed


def render(old_name: str, new_name: str, parts: list) -> str:
    bodies, summary = [], []
    for i, (title, a, b) in enumerate(parts):
        body, added, removed = render_unit(i, title, a, b)
        bodies.append(body)
        summary.append(f'<tr><td><a href="#diff-{i}">{title}</a></td>'
                       f'<td class="diff-plus">+{added}</td><td class="diff-minus">&minus;{removed}</td></tr>')
    head = (f'<p class="diff-intro">From <code>chapters/{old_name}</code> to <code>chapters/{new_name}</code>: '
            f'{len(parts)} file(s) changed. Removed lines are red, added lines green; '
            f'each change is shown with {CONTEXT} unchanged lines around it.</p>'
            f'<table class="diff-summary"><tr><th>file</th><th>added</th><th>removed</th></tr>'
            f'{"".join(summary)}</table>')
    return '<div class="chapter-diff">' + head + "".join(bodies) + "</div>\n"


def title_of(chapter: str) -> str:
    num, _, slug = chapter.partition("-")
    return f"Chapter {int(num)} ({slug.replace('-', ' ')})"


def main(argv: list) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    chapters_dir, out_dir, chapters = Path(argv[1]), Path(argv[2]), argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old_name, new_name in zip(chapters, chapters[1:]):
        num = new_name[:2]
        parts = units(chapters_dir / old_name, chapters_dir / new_name)
        (out_dir / f"ch{num}_diff.html").write_text(render(old_name, new_name, parts), encoding="utf-8")
        page = (f"{title_of(new_name)}: what changed since chapter {int(old_name[:2])} {{#ch{num}_diff}}\n"
                f"{'=' * 60}\n\n"
                f"Generated at build time from the two chapter folders (`docs/chapter_diffs.py`), so it is\n"
                f"always the real change. Back to \\ref ch{num}.\n\n"
                f"\\htmlinclude[block] ch{num}_diff.html\n")
        (out_dir / f"ch{num}_diff.md").write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
