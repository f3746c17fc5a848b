"""``careloop explain a.hl7@TIME b.hl7@+2d``: the clock moves between inputs, due triggers fire
on the way, and the journey timeline is shown."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.cli import main

REPO = Path(__file__).resolve().parents[2]

BOOK = ("MSH|^~\\&|SCH|HOSPA|CARELOOP|CL|20250501090000-0400||SIU^S12^SIU_S12|X-MAM-1|P|2.5.1\r"
        "SCH|M100^SCH|M100^SCH||||||ROUTINE^Routine^HL70277||||||||||||||||Booked\r"
        "TQ1|1||||||20250520093000-0400|20250520100000-0400\r"
        "PID|1||MRN300^^^HOSPA^MR||TEST^MAMMO||19700101|F\rRGS|1\rAIS|1||77067^Screening mammography^C4\r")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    book, cancel, rebook = tmp_path / "book.hl7", tmp_path / "cancel.hl7", tmp_path / "rebook.hl7"
    book.write_text(BOOK)
    cancel.write_text(BOOK.replace("S12^SIU_S12|X-MAM-1", "S15^SIU_S15|X-MAM-2").replace("Booked", "Cancelled")
                      .replace("20250501090000", "20250505090000"))
    rebook.write_text(BOOK.replace("X-MAM-1", "X-MAM-3").replace("M100", "M101").replace("20250520", "20250610")
                      .replace("20250501090000", "20250515090000"))
    return book, cancel, rebook


def test_times_move_the_clock_and_the_journey_timeline_is_shown(files: tuple[Path, Path, Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    book, cancel, rebook = files
    args = ["explain", f"{book}@2025-05-01T09:00", f"{cancel}@+4d", f"{rebook}@2025-05-15T09:00:00-04:00",
            "--horizon-days", "30", "--mappings", str(REPO / "mappings")]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(e["input"], e["at"]) for e in out["events"]] == [
        (str(book), "2025-05-01T09:00:00-04:00"), (str(cancel), "2025-05-05T09:00:00-04:00"),
        (str(rebook), "2025-05-15T09:00:00-04:00")]
    (j,) = out["journeys"]
    assert j["journey"] == "mammography-recall"
    first, second = j["steps"]
    assert (first["planned"], first["status"]) == ("2025-05-12T09:00:00-04:00", "fired")  # fired while the clock moved
    assert (second["planned"], second["status"]) == ("2025-05-26T09:00:00-04:00", "cancelled")
    assert "exit 'rebooked'" in j["exit"]["reason"] and j["exit"]["at"] == "2025-05-15T09:00:00-04:00"
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"== {cancel} at 2025-05-05T09:00:00-04:00: event appointment.cancelled" in text
    assert "== journeys (steps, planned times, exits)" in text
    assert "step 2 mammography-recall.second-recall: planned 2025-05-26T09:00:00-04:00 -> cancelled" in text


@pytest.mark.parametrize("suffix, words", [
    ("@yesterday", "'yesterday' is not a time (use FILE@2026-03-01T09:00"),
    ("@+2 days", "'+2 days' is not a duration"),
    ("@-1d", "the clock cannot move back"),
])
def test_bad_times_are_one_line_errors(files: tuple[Path, Path, Path], suffix: str, words: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    book, cancel, _ = files
    assert main(["explain", str(book), f"{cancel}{suffix}", "--mappings", str(REPO / "mappings")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("careloop explain: ") and words in err, err


def test_a_time_before_the_clock_is_refused(files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    book, cancel, _ = files
    assert main(["explain", f"{book}@2025-05-05T09:00", f"{cancel}@2025-05-01T09:00",
                 "--mappings", str(REPO / "mappings")]) == 2
    assert "the clock cannot move back" in capsys.readouterr().err
