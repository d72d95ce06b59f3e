"""The TUI's widgets: each knows how to show one thing and posts messages up; none calls the backend."""
