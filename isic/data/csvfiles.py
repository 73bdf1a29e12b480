"""Reading CSV files (Task 3 ground truth, HAM10000 metadata, Task 3 predictions) as UTF-8,
and the one reader of the Task 3 ground-truth CSV (`read_task3_truth`), for training and
scoring alike.

The official files are ASCII; spreadsheets save UTF-8 with a byte-order mark ("CSV UTF-8"
in Excel) or in a legacy code page. A BOM is accepted and dropped; any other encoding is
refused with the file and line of the first byte that is not UTF-8, rather than guessed.
"""
import collections
import csv
import io
import os
import pathlib

from isic import layout

# Per-image weights that later ISIC ground-truth files carry beside the diagnoses.
TASK3_WEIGHT_COLUMNS = ("score_weight", "validation_weight")

# One row of a Task 3 ground-truth CSV: its line number, the seven diagnosis cells (in
# layout.DIAGNOSES order) and the two weight cells (None when the header has no weights);
# a weight column the header lacks reads as ''; values and weights are None together when the
# row has not the header's number of fields.
Task3Row = collections.namedtuple("Task3Row", "line values weights")


def read_text(path, error_type):
    """The text of a UTF-8 file (a leading BOM dropped); `error_type` naming the file and
    line when it is not UTF-8."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise error_type(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                         f"save the file as UTF-8 (in Excel: 'CSV UTF-8')") from None


def read_rows(path_or_stream, error_type):
    """All rows of a UTF-8 CSV file (or an open text stream), as lists of strings."""
    text = (read_text(path_or_stream, error_type) if isinstance(path_or_stream, (str, os.PathLike))
            else path_or_stream.read())
    return list(csv.reader(io.StringIO(text, newline="")))


def show_header_cell(cell):
    """A header cell for a message: quoted, and escaped by repr when it holds invisible
    characters (zero-width spaces, control characters), so the user sees why it does not match."""
    return repr(cell) if not cell.isprintable() else f"'{cell}'"


def lookalike(column, header):
    """The header cell that would be `column` but for invisible characters, or None."""
    for cell in header:
        if cell != column and "".join(ch for ch in cell if ch.isprintable()).strip() == column:
            return cell
    return None


def read_task3_truth(path_or_stream, error_type):
    """The Task 3 ground-truth CSV -> ({isic_id: Task3Row}, [(Task3Row, isic_id, first Task3Row)]).

    The header must hold `image` and the seven diagnoses (the two weight columns may follow),
    each once; anything else is `error_type` naming the file and the column. Blank rows are
    passed over; a repeated id keeps its first row and the repeat is returned in the second
    list, for the caller to warn about (training) or refuse (scoring). Cells are stripped
    strings: what they must hold is the caller's rule.
    """
    is_path = isinstance(path_or_stream, (str, os.PathLike))
    name = str(path_or_stream) if is_path else "the Task 3 ground-truth CSV"
    rows = read_rows(path_or_stream, error_type)
    expected = ",".join(layout.TASK3_CSV_HEADER)
    if not rows:
        raise error_type(f"{name} is empty; expected the header {expected}")
    header = [c.strip() for c in rows[0]]
    for column in header:
        if column not in layout.TASK3_CSV_HEADER + TASK3_WEIGHT_COLUMNS:
            invisible = "" if column.isprintable() else " (it holds invisible characters)"
            raise error_type(f"{name}: unknown column {show_header_cell(column)}{invisible}; expected {expected}")
    for column in layout.TASK3_CSV_HEADER:
        if column not in header:
            raise error_type(f"{name}: missing column '{column}'; expected {expected}")
    if len(set(header)) != len(header):
        raise error_type(f"{name}: a column is repeated in the header {','.join(header)}")
    value_columns = [header.index(c) for c in layout.DIAGNOSES]
    weight_columns = ([header.index(c) if c in header else -1 for c in TASK3_WEIGHT_COLUMNS]
                      if any(c in header for c in TASK3_WEIGHT_COLUMNS) else None)
    table, repeats = {}, []
    for number, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        whole = len(cells) == len(header)
        isic_id = (cells[header.index("image")] if whole else cells[0]).strip()
        values = [cells[c].strip() for c in value_columns] if whole else None
        weights = None
        if whole and weight_columns is not None:
            weights = [cells[c].strip() if c >= 0 else "" for c in weight_columns]
        row = Task3Row(number, values, weights)
        if isic_id in table:
            repeats.append((row, isic_id, table[isic_id]))
        else:
            table[isic_id] = row
    return table, repeats
