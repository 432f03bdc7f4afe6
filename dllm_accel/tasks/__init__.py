"""Tasks: prompts, answer extraction and scoring."""
