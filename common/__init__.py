"""What every layer of the repository shares: the user-error exception and how commands report it."""
