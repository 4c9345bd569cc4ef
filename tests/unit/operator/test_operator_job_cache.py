"""The job body cache keeps the newest body it was offered, by resource version (KEP-5504 comparison)."""

from __future__ import annotations

from llmtrain_operator.job_cache import CachedJob, compare_versions


def body(version: str, **status: object) -> dict:
    meta = {"name": "j", "resourceVersion": version, "managedFields": [{"manager": "kubectl"}]}
    return {"metadata": meta, "status": dict(status)}


def test_versions_compare_as_numbers_not_as_strings():
    assert compare_versions("9", "10") == -1
    assert compare_versions("100", "99") == 1
    assert compare_versions("42", "42") == 0


def test_malformed_versions_cannot_be_compared():
    for bad in ("", None, "012", "12a", "-3", "١٢"):
        assert compare_versions(bad, "5") is None
        assert compare_versions("5", bad) is None


def test_an_older_body_does_not_replace_a_newer_one():
    cache = CachedJob()
    cache.offer(body("10", phase="Running"))
    cache.offer(body("9", phase="Pending"))
    assert cache.body is not None and cache.body["status"] == {"phase": "Running"}
    cache.offer(body("11", phase="Succeeded"))
    assert cache.body["status"] == {"phase": "Succeeded"}


def test_a_body_whose_version_cannot_be_compared_empties_the_cache_so_the_job_is_read():
    cache = CachedJob()
    cache.offer(body("10"))
    cache.offer(body("opaque-token"))
    assert cache.body is None
    cache.offer(body("opaque-token"))
    assert cache.body is None


def test_managed_fields_are_not_kept():
    cache = CachedJob()
    cache.offer(body("3"))
    assert cache.body is not None and "managedFields" not in cache.body["metadata"]


def test_invalidate_forgets_the_body():
    cache = CachedJob()
    cache.offer(body("3"))
    cache.invalidate()
    assert cache.body is None
