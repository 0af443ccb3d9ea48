"""Detection: per-user baselines and workflow rules that flag what departs from normal, explained."""
