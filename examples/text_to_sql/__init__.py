"""The text-to-SQL demo: ``python -m examples.text_to_sql`` (what ``make demo`` runs)."""
