"""What every domain uses and no domain owns: the hand-off to the workers (``queue``)."""
