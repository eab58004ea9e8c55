"""The committed JSON Schemas under docs/schemas/ match the models."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from workers.cli import app
from workers.commands.schema import render, schema_documents

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_committed_schemas_match_the_models() -> None:
    documents = schema_documents()
    committed = {p.name for p in SCHEMAS.glob("*.schema.json")}
    assert committed == set(documents), "run `make schemas` and commit docs/schemas/"
    for name, document in documents.items():
        assert (SCHEMAS / name).read_text() == render(document), (
            f"{name} drifted from its model: run `make schemas` and commit docs/schemas/"
        )


def test_export_writes_one_schema_per_type_version_and_removes_stale(tmp_path: Path) -> None:
    (tmp_path / "billing.charge.refund.v1.schema.json").write_text("{}")
    result = CliRunner().invoke(app, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in tmp_path.glob("*.schema.json")}
    assert "billing.charge.refund.v1.schema.json" not in names
    assert "crm.customer.upsert.v2.schema.json" in names
    assert names == set(schema_documents())
