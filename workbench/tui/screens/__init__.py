"""The TUI's screens: the main chat screen and the modals it opens."""
