"""Where the ``monitor`` stage writes and the dashboard reads (no heavy imports: the dashboard uses it)."""

SUMMARY_DIR = "summary"
REPORTS_DIR = "reports"
STATUS_FILE = "status.json"
TABLES = ("windows", "drift", "versions", "experiments", "catalog", "categories")
DRIFT_GROUPS = ("features", "context", "engagement")
