"""Workflows: a chord (fan-out, then fan-in on every result) and a chain (each step reads
the step before), deferred in one transaction each; the graph around a job.

Run: python examples/workflows.py
"""

from __future__ import annotations

import os

import attrs

from orchestra import Config, JobContext, JobDefinition, Worker, chain, chord

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_workflows"))


@attrs.frozen
class Page:
    url: str


@attrs.frozen
class Fetched:
    url: str
    words: int


def fetch(page: Page) -> Fetched:
    return Fetched(page.url, words=len(page.url) * 100)  # stands for a download


def merge(payload: dict[str, str], ctx: JobContext) -> dict[str, int]:
    # {member id: result}, in id order (the order the chord was given).
    pages = ctx.dependency_results(as_type=Fetched)
    return {"pages": len(pages), "words": sum(page.words for page in pages.values())}


def step(payload: dict[str, int], ctx: JobContext) -> int:
    # A chain step depends on the one before: one result, or none for the first step.
    before: dict[int, int] = ctx.dependency_results()
    return sum(before.values()) * 10 + payload["digit"]


fetch_page = JobDefinition(config, name="fetch-page", job_function=fetch, payload_type=Page)
merge_pages = JobDefinition(config, name="merge-pages", job_function=merge)
digit = JobDefinition(config, name="append-digit", job_function=step)


def main() -> None:
    config.prepare_schema()
    urls = ["https://example.com/a", "https://example.com/bb", "https://example.com/ccc"]
    crawl = chord([fetch_page.job(Page(url)) for url in urls], then=merge_pages.job({}))
    number = chain([digit.job({"digit": d}) for d in (4, 2, 7)])
    assert crawl.callback is not None
    print("merge is", crawl.callback.status(), "until every page is fetched")

    worker = Worker(config, concurrency=4)
    worker.start()
    try:
        print("crawl:", crawl.result(timeout=30))
        print("chain:", number.result(timeout=30))
    finally:
        worker.stop()
        worker.join()

    graph = config.jobs.graph(crawl.callback)
    for node in graph.nodes:
        print(f"  job {node.id} {node.definition} {node.status} (depth {node.depth})")
    config.close()


if __name__ == "__main__":
    main()
