"""Runbooks: every alert's runbook_url is absolute, under the one base, and resolves to a page and heading."""
import re

import sync_generated

from . import paths
from .common import Problems, alert_rules, load_yaml, rel

RUNBOOK_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation", "Escalation"]


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def kebab(name):
    """NatsJetStreamStorageNearLimit -> nats-jetstream-storage-near-limit (product names stay one word)."""
    name = name.replace("JetStream", "Jetstream")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def check_runbooks():
    p = Problems()
    referenced = set()
    count = 0
    base = sync_generated.runbook_base()
    p.check(re.match(r"https?://[^/\s]+/", base + "/"), rel(sync_generated.RUNBOOK_BASE),
            f"runbook base {base!r} is not an absolute http(s) URL")
    # The PrometheusRule carries the same links as the rule files (it is generated from them).
    generated = {r["alert"]: r.get("annotations", {}).get("runbook_url")
                 for g in load_yaml(paths.K8S / "prometheusrule.yaml")["spec"]["groups"]
                 for r in g["rules"] if "alert" in r}
    for _, rule in alert_rules():
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url", "")
        where = f"{name} runbook_url {url!r}"
        p.check(generated.get(name) == url, where,
                f"{rel(paths.K8S / 'prometheusrule.yaml')} has {generated.get(name)!r} "
                "(run deploy/tools/sync_generated.py)")
        m = re.fullmatch(re.escape(base) + r"/([a-z0-9-]+\.md)#([a-z0-9_-]+)", url)
        if not p.check(m, where, f"must be {base}/<page>.md#<heading> (run deploy/tools/sync_generated.py)"):
            continue
        page, anchor = m.groups()
        p.check(page == f"{kebab(name)}.md", where, f"one page per alert: expected {kebab(name)}.md")
        path = paths.RUNBOOKS / page
        if not p.check(path.is_file(), where, f"{rel(paths.RUNBOOKS)}/{page} does not exist"):
            continue
        referenced.add(page)
        _check_page(p, name, where, path, anchor)
        count += 1
    for path in sorted(paths.RUNBOOKS.glob("*.md")):
        if path.name != "README.md":
            p.check(path.name in referenced, rel(path), "no alert links to this runbook")
    _check_links(p)
    _check_index(p, referenced)
    return p.done(f"{count} runbook_urls under {base}, the same in prometheusrule.yaml, resolve to a page and "
                  f"heading with all {len(RUNBOOK_SECTIONS)} sections")


def _check_page(p, name, where, path, anchor):
    """The page of alert `name`: the heading `anchor`, its title, every section with some words in it."""
    text = path.read_text()
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    p.check(anchor in {slug(h) for h in headings}, where, f"no heading with anchor #{anchor} in {path.name}")
    p.check(headings and headings[0] == name, rel(path), f"the page's title must be the alert name {name}")
    sections = re.findall(r"^## (.+)$", text, re.M)
    for section in RUNBOOK_SECTIONS:
        p.check(section in sections, rel(path), f"missing section '## {section}'")
    for section in RUNBOOK_SECTIONS:
        body = re.search(rf"^## {section}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
        if body:
            p.check(len(body.group(1).split()) >= 8, rel(path), f"section '{section}' is nearly empty")


def _check_links(p):
    """Links between pages and into the repository resolve too."""
    for path in sorted(paths.RUNBOOKS.glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if p.check(dest.exists(), rel(path), f"link {target} points to a missing file"):
                if anchor and dest.suffix == ".md":
                    anchors = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", dest.read_text(), re.M)}
                    p.check(anchor in anchors, rel(path), f"link {target}: no heading #{anchor}")


def _check_index(p, referenced):
    """docs/runbooks/README.md links every page and no missing one."""
    index = paths.RUNBOOKS / "README.md"
    if p.check(index.is_file(), rel(paths.RUNBOOKS), "README.md (the index) is missing"):
        links = set(re.findall(r"\]\(([a-z0-9-]+\.md)[^)]*\)", index.read_text()))
        for page in sorted(referenced - links):
            p.add(rel(index), f"does not link {page}")
        for page in sorted(links):
            p.check((paths.RUNBOOKS / page).is_file(), rel(index), f"links a missing page {page}")
