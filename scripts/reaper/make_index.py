#!/usr/bin/env python3
"""Writes the ReaPack index (index.xml) for the scripts in this folder.

    python scripts/reaper/make_index.py https://raw.githubusercontent.com/OWNER/REPO 0123abc… [-o index.xml]

Every <source> URL is pinned to COMMIT (`<base>/<commit>/scripts/reaper/<file>`), the version is the
package's (pyproject.toml), the time is the commit's (git), and the package's description, @provides roles
and changelog come from the main script's header. Run it after committing, then commit index.xml.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

HERE = Path(__file__).resolve().parent
MAIN = "sam-bridge - Separate selected items.lua"
FOLDER_IN_REPO = "scripts/reaper"


def package_version(root: Path) -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    if not match:
        raise SystemExit("no version in pyproject.toml")
    return match.group(1)


def commit_time(commit: str) -> str:
    """The commit's time in UTC (ISO 8601), or now when git does not know the commit."""
    done = subprocess.run(["git", "-C", str(HERE), "show", "-s", "--format=%ct", commit],
                          capture_output=True, text=True, check=False)
    stamp = datetime.fromtimestamp(int(done.stdout.strip()), UTC) if done.returncode == 0 and done.stdout.strip() \
        else datetime.now(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_version_moved(version: str, commit: str, published: Path) -> None:
    """ReaPack installs an update only when its version is newer: the same version pinned to another commit
    whose scripts differ would never reach anyone who installed the earlier one."""
    if not published.exists():
        return
    text = published.read_text(encoding="utf-8")
    old_commit = re.search(r"for commit ([0-9a-f]{40})", text)
    old_version = re.search(r'<version name="([^"]+)"', text)
    if not old_commit or not old_version or old_version.group(1) != version or old_commit.group(1) == commit:
        return
    done = subprocess.run(["git", "-C", str(HERE), "diff", "--quiet", old_commit.group(1), commit, "--",
                           f":(top){FOLDER_IN_REPO}/*.lua"], capture_output=True, check=False)
    if done.returncode == 1:  # 0: the same scripts; 128: git does not know a commit (nothing to compare)
        raise SystemExit(f"the scripts changed since {old_commit.group(1)[:12]}, which {published.name} serves "
                         f"as version {version}: ReaPack updates only to a newer version, so bump it "
                         "(pyproject.toml, bridge/__init__.py, sam_bridge_core.lua's VERSION, the main script's "
                         "@version and @changelog)")


def header(text: str) -> dict[str, list[str]]:
    """The ReaPack tags of a script's header: @tag value, and indented lines that follow it."""
    tags: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        body = line[2:]
        tag = re.match(r"\s*@(\w+)\s*(.*)$", body)
        if tag:
            current = tags.setdefault(tag.group(1), [])
            if tag.group(2):
                current.append(tag.group(2).strip())
        elif current is not None and body.startswith("   "):
            current.append(body[3:].rstrip())
    return tags


def make_index(base_url: str, commit: str, root: Path) -> str:
    version = package_version(root)
    main_text = (HERE / MAIN).read_text(encoding="utf-8")
    tags = header(main_text)
    declared = (tags.get("version") or [""])[0]
    if declared != version:
        raise SystemExit(f"{MAIN} says @version {declared}, the package is {version}: make them agree")
    provides = [re.match(r"\[(\w+)\]\s+(.+)$", line) for line in tags.get("provides", [])]
    roles = {m.group(2): m.group(1) for m in provides if m}
    listed = sorted(p.name for p in HERE.glob("*.lua"))
    missing = [name for name in listed if name != MAIN and name not in roles]
    if missing:
        raise SystemExit(f"not in {MAIN}'s @provides: {', '.join(missing)}")

    def url(name: str) -> str:
        return f"{base_url.rstrip('/')}/{commit}/{FOLDER_IN_REPO}/{quote(name)}"

    sources = [f'        <source main="main">{escape(url(MAIN))}</source>']
    for name in sorted(roles):
        main = ' main="main"' if roles[name] == "main" else ""
        sources.append(f"        <source{main} file={quoteattr(name)}>{escape(url(name))}</source>")
    about = "\n".join(tags.get("about", [])).strip()
    changelog = "\n".join(tags.get("changelog", [])).strip()
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>',
        f"<!-- ReaPack index for sam-bridge's REAPER scripts, made by {FOLDER_IN_REPO}/make_index.py"
        f" for commit {escape(commit)}. Do not edit: run it again. -->",
        '<index version="1" name="sam-bridge">',
        '  <category name="Items Editing">',
        f'    <reapack name={quoteattr(MAIN)} type="script" desc={quoteattr((tags.get("description") or [""])[0])}>',
        "      <metadata>",
        f"        <description><![CDATA[{about}]]></description>",
        "      </metadata>",
        f'      <version name={quoteattr(version)} author="sam-bridge" time="{commit_time(commit)}">',
        f"        <changelog><![CDATA[{changelog}]]></changelog>",
        *sources,
        "      </version>",
        "    </reapack>",
        "  </category>",
        "</index>",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_url", help="raw file base of the repository, e.g. https://raw.githubusercontent.com/o/r")
    parser.add_argument("commit", help="the commit the URLs point at (a full hash)")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "index.xml")
    args = parser.parse_args(argv)
    check_version_moved(package_version(HERE.parents[1]), args.commit, HERE / "index.xml")
    text = make_index(args.base_url, args.commit, HERE.parents[1])
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
