"""Agent tools: the model reads, searches and proposes edits, with the user in control (issue 17)."""
