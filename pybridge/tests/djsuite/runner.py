"""A Django test runner that records each test's outcome as JSON, also in parallel runs (the
workers' events are replayed on the main process's result object)."""

from __future__ import annotations

import json
import os
import unittest
from typing import Any, ClassVar

from django.test.runner import DiscoverRunner

#: When a test reports several outcomes (subtests), the worst wins.
_RANK = {"pass": 0, "skip": 1, "xfail": 1, "fail": 2, "error": 3, "xpass": 3}


class RecordingResult(unittest.TextTestResult):
    outcomes: ClassVar[dict[str, str]] = {}

    def _record(self, test: Any, outcome: str) -> None:
        key = test.id()
        old = self.outcomes.get(key)
        if old is None or _RANK[outcome] > _RANK[old]:
            self.outcomes[key] = outcome

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._record(test, "pass")

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "fail")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skip")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "xpass")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "fail" if failed else "error")


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self) -> Any:
        return super().get_resultclass() or RecordingResult

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        from django.db import connections

        RecordingResult.outcomes = {}
        # What the test databases are (after setup_databases): proof of where the run went.
        databases = {
            alias: {
                "engine": conn.settings_dict["ENGINE"],
                "name": str(conn.settings_dict["NAME"]),
                "litefs_mount": getattr(conn, "_litefs_mount", None),
                "transaction_mode": getattr(conn, "transaction_mode", None),
            }
            for alias, conn in ((a, connections[a]) for a in connections)
        }
        result = super().run_suite(suite, **kwargs)
        path = os.environ.get("DJSUITE_RESULTS")
        if path:
            with open(path, "w") as f:
                out = {"databases": databases, "outcomes": RecordingResult.outcomes}
                json.dump(out, f, indent=0, sort_keys=True)
        return result
