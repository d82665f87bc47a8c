"""Where the package and the repository it ships with live (notebooks/, native/, experiments/)."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parent
LOGS_DIR = REPO_ROOT / "logs"  # tuning logs shipped per machine kind, preset and batch size
