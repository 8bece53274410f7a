"""Jobs: generators that yield immutable per-step results, and the job folders they write."""
