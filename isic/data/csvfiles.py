"""Reading CSV files (Task 3 ground truth, HAM10000 metadata, Task 3 predictions) as UTF-8.

The official files are ASCII; spreadsheets save UTF-8 with a byte-order mark ("CSV UTF-8"
in Excel) or in a legacy code page. A BOM is accepted and dropped; any other encoding is
refused with the file and line of the first byte that is not UTF-8, rather than guessed.
"""
import csv
import io
import pathlib


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


def read_rows(path, error_type):
    """All rows of a UTF-8 CSV file, as lists of strings."""
    return list(csv.reader(io.StringIO(read_text(path, error_type), newline="")))


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
