"""A personal model from one person's footage (train_person.py): the footage checked and cut into training and
held-out parts (footage.py), the schedule sized to the footage and the device (schedule.py), the repository's
commands run one after another, each skipped once its output exists (steps.py), and what a person looks at in
the end (results.py)."""
