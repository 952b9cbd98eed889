"""Speed measurements (bench.py); published/ holds the published-code baselines they are compared with."""
