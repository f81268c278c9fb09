"""What the tests expect of a command that refuses its input (shared by several test files)."""


def error_line(result) -> str:
    """Exit status 1, one ``Error:`` paragraph, no traceback; returns that line."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]
